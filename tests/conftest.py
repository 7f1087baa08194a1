"""Shared fixtures and the one copy of every helper more than one test module uses.

Fixtures: the locally built CondaTainer images and an isolated user layout (or one of
placeholder images, for tests that read only names), our kernelspecs, the local conda
channel, a SLURM cluster, the REST API of an in-process jupyter_server. Helpers: a real
``jupyter server`` subprocess, polling, ports, plans and instances. Test modules import
the helpers with ``from conftest import ...``.

Integration tests need a working Apptainer and the images from
``scripts/build-images.sh`` (the README's test command provides both). When they are
missing the tests fail with the reason; they are never skipped silently.
"""

from __future__ import annotations

import asyncio
import getpass
import itertools
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from jupyter_client import BlockingKernelClient

from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.host.instances import Instance, InstanceManager
from kernel_provider.host.probes import ImageProbe
from kernel_provider.host.process import CommandResult, apptainer_env, run
from kernel_provider.kernel.kernelspecs import KernelspecStore
from kernel_provider.model import command, envfile
from kernel_provider.model.overlays import scan
from kernel_provider.model.plan import ContainerPlan, StackRequest, plan_container

pytest_plugins = ("pytest_jupyter.jupyter_server",)

CACHE = Path(os.environ.get("JCT_CACHE", "/var/cache/jupyter-condatainer"))
IMAGES = Path(os.environ.get("JCT_IMAGES", CACHE / "images"))
# The supplied-ipykernel cache is worth keeping between runs (it is downloaded); one per
# user, since each user must be able to write its own (scripts/setup-testuser.sh makes it).
USER_CACHE = Path(
    os.environ.get("JCT_USER_CACHE")
    or (CACHE / "user-cache" if os.getuid() == 0 else CACHE / "users" / getpass.getuser() / "cache")
)
# debugfs is in /sbin, which an ordinary user's PATH often lacks (the product looks there too).
DEBUGFS = shutil.which("debugfs") or "/sbin/debugfs"
REQUIRED_IMAGES = ("ubuntu24--base_image.sif", "python--3.11.sqf", "hello--1.0.sqf", "testenv.img")
KERNEL = "condatainer-python-3.11"  # the kernelspec sync_specs() writes for the test images' python/3.11
# SingularityCE, installed next to Apptainer by scripts/setup-singularityce.sh
SINGULARITYCE_BIN = os.environ.get("JCT_SINGULARITYCE_BIN", "/opt/singularityce/bin/singularity")


@pytest.fixture(scope="session")
def built_images() -> Path:
    """The cached test images; fail (not skip) with what to run when absent."""
    apptainer = shutil.which("apptainer") or shutil.which("singularity")
    if not apptainer:
        pytest.fail("Apptainer is not installed: run scripts/setup.sh (the README's test command does)")
    missing = [name for name in REQUIRED_IMAGES if not (IMAGES / name).is_file()]
    if missing:
        pytest.fail(f"test images missing in {IMAGES}: {', '.join(missing)}; run scripts/build-images.sh")
    return IMAGES


def singularityce_bin() -> str:
    """The SingularityCE binary; fail (not skip) with what to run when absent."""
    if not os.access(SINGULARITYCE_BIN, os.X_OK):
        pytest.fail(
            f"SingularityCE is not installed ({SINGULARITYCE_BIN}): run scripts/setup.sh as root (it runs "
            "scripts/setup-singularityce.sh when ../shared/tools/singularityce is there, or set "
            "JCT_SINGULARITYCE_TARBALL), or deselect these tests with -m 'not singularityce'"
        )
    return SINGULARITYCE_BIN


RUNTIMES = ["apptainer", pytest.param("singularityce", marks=pytest.mark.singularityce)]
# For tests that hold without instances too: SingularityCE's OCI mode, by its own SINGULARITY_OCI.
RUNTIMES_AND_OCI = [*RUNTIMES, pytest.param("singularityce-oci", marks=pytest.mark.singularityce)]


@pytest.fixture(params=RUNTIMES)
def container_runtime(request, monkeypatch) -> str:
    """Run a test once on each runtime, chosen the way CondaTainer reads it ($CNT_APPTAINER_BIN);
    a test parametrized (indirectly) with ``RUNTIMES_AND_OCI`` also in OCI mode."""
    binary = shutil.which("apptainer") if request.param == "apptainer" else singularityce_bin()
    if not binary:
        pytest.fail("Apptainer is not installed: run scripts/setup.sh (the README's test command does)")
    monkeypatch.setenv("CNT_APPTAINER_BIN", binary)
    if request.param.endswith("-oci"):
        monkeypatch.setenv("SINGULARITY_OCI", "true")
    return binary


def runtime_bin() -> str:
    """The runtime this test uses (see ``container_runtime``): $CNT_APPTAINER_BIN, else apptainer."""
    return CondaTainerConfig().require_apptainer()


@pytest.fixture
def image_layout(tmp_path, monkeypatch, built_images):
    """A private image directory and CondaTainer state for one test.

    The read-only images are hard-linked (or copied) from the cache; the writable
    ``env.img`` is a fresh copy, so a test can write into it.
    """
    populate_images(tmp_path / "images", built_images)
    return point_condatainer_at(tmp_path, monkeypatch)


def populate_images(images: Path, built_images: Path) -> None:
    """A new image directory: the read-only images hard-linked (or copied) from the cache with
    their sidecars, and a fresh ``env.img`` copy that a test may write into."""
    images.mkdir()
    for name in REQUIRED_IMAGES[:-1]:
        _link_or_symlink(built_images / name, images / name)
        if (built_images / f"{name}.env").exists():
            shutil.copy(built_images / f"{name}.env", images / f"{name}.env")
    sparse_copy(built_images / "testenv.img", images / "env.img")


@pytest.fixture
def placeholder_layout(tmp_path, monkeypatch):
    """``image_layout`` made of empty files named like the test images: for what reads only the
    catalog (names, kinds, validation), so it runs without Apptainer or the built images."""
    placeholder_images(tmp_path / "images", [*REQUIRED_IMAGES[:-1], "env.img"])
    return point_condatainer_at(tmp_path, monkeypatch)


def point_condatainer_at(root: Path, monkeypatch) -> Path:
    """Make ``root/images`` the image directory and ``root/state`` the state of everything
    CondaTainer-configured in this test, and ``root`` the working directory."""
    (root / "state").mkdir()
    monkeypatch.setenv("XDG_STATE_HOME", str(root / "state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(USER_CACHE))
    monkeypatch.setenv("CNT_EXTRA_IMAGE_DIRS", str(root / "images"))
    monkeypatch.chdir(root)
    return root


def placeholder_images(directory: Path, filenames) -> Path:
    """Empty files named like images: scanning the catalog reads names only."""
    directory.mkdir(parents=True, exist_ok=True)
    for filename in filenames:
        (directory / filename).write_bytes(b"")
    return directory


@pytest.fixture
def user_layout(image_layout, monkeypatch):
    """``image_layout`` plus private Jupyter runtime/data/config directories."""
    for variable, sub in [
        ("JUPYTER_RUNTIME_DIR", "runtime"),
        ("JUPYTER_DATA_DIR", "data"),
        ("JUPYTER_CONFIG_DIR", "config"),
    ]:
        (image_layout / sub).mkdir()
        monkeypatch.setenv(variable, str(image_layout / sub))
    monkeypatch.setenv("JUPYTER_PATH", str(image_layout / "data"))
    # A server restarted in a test would warm the stacks of its first life's kernels: only
    # tests/test_prewarm.py wants that.
    set_server_config(image_layout, {"CondaTainerExtension": {"prewarm_recent": 0}})
    return image_layout


def set_server_config(layout: Path, config: dict) -> None:
    """Add to the ``jupyter_server_config.json`` of the servers a test starts in ``layout``
    (section by section: what ``user_layout`` set stays unless a section says otherwise)."""
    path = layout / "config" / "jupyter_server_config.json"
    merged = json.loads(path.read_text()) if path.exists() else {}
    for section, values in config.items():
        merged[section] = {**merged.get(section, {}), **values}
    path.write_text(json.dumps(merged))


@pytest.fixture
def kernel_env(user_layout):
    """``user_layout`` with our kernelspecs written (one per python overlay)."""
    sync_specs()
    return user_layout


def sync_specs() -> None:
    """Write our kernelspecs for the configured image directories, as the server does at start."""
    config = CondaTainerConfig()
    KernelspecStore().sync(scan(config.image_dirs, config.distro))


def _link_or_symlink(source: Path, target: Path) -> None:
    """Share a read-only image without copying it (an ordinary user may not hard-link root's
    files: fs.protected_hardlinks), so a test costs no disk space."""
    try:
        os.link(source, target)
    except OSError:
        target.symlink_to(source)


def sparse_copy(source: Path, target: Path) -> None:
    """Copy an ext3 image keeping its holes (a 256 MiB env is a few MiB on disk)."""
    subprocess.run(["cp", "--sparse=always", str(source), str(target)], check=True)


@contextmanager
def held_writable(image: Path, base_image: Path, name: str):
    """``image`` mounted read-write by a container that is not ours (an instance, as a CondaTainer
    shell would hold it) for the ``with`` block; an ordinary user mounts the root-built env with
    ``--fakeroot``, as CondaTainer does."""
    subprocess.run(
        [
            "apptainer",
            "instance",
            "start",
            *(["--fakeroot"] if os.getuid() else []),
            "--overlay",
            f"{image}:rw",
            str(base_image),
            name,
        ],
        check=True,
        capture_output=True,
        env=apptainer_env(),
    )
    try:
        yield name
    finally:
        subprocess.run(["apptainer", "instance", "stop", name], capture_output=True, env=apptainer_env())


def exec_on_env(image: Path, base_image: Path, argv: list[str]) -> str:
    """Run ``argv`` in a one-shot container that mounts ``image`` read-write (with ``--fakeroot``
    for an ordinary user, as CondaTainer does): its stdout."""
    result = subprocess.run(
        [
            "apptainer",
            "exec",
            *(["--fakeroot"] if os.getuid() else []),
            "--overlay",
            f"{image}:rw",
            str(base_image),
            *argv,
        ],
        capture_output=True,
        text=True,
        env=apptainer_env(),
        check=True,
        timeout=120,
    )
    return result.stdout


def running_instances() -> set[str]:
    """This user's running instance names, straight from the runtime in use (:func:`runtime_bin`)."""
    binary = runtime_bin()
    out = subprocess.run(
        [binary, "instance", "list"], capture_output=True, text=True, env=apptainer_env(binary), check=True
    ).stdout
    return {line.split()[0] for line in out.splitlines()[1:] if line.strip()}


def processes_mentioning(text: str) -> list[str]:
    """Host processes whose command line contains ``text`` (to prove nothing is left)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and int(pid) != os.getpid():
            found.append(f"{pid}: {cmdline}")
    return found


def free_port() -> int:
    """A localhost TCP port nobody listens on now (for a server a test starts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def poll(condition, timeout: float, interval: float = 0.2):
    """The first truthy value of ``condition()`` within ``timeout`` seconds, else None: for what
    may rightly never come (the caller decides); :func:`wait_until` when it must come."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    return None


def wait_until(condition, timeout: float, what: str, interval: float = 0.2):
    """The first truthy value of ``condition()``; fail saying what never came after ``timeout`` seconds."""
    value = poll(condition, timeout, interval)
    if not value:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")
    return value


class Server:
    """``jupyter server`` as a subprocess, so it can be killed with SIGKILL."""

    def __init__(self, root: Path, port: int):
        self.root, self.port, self.token = root, port, "test-token"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.root / f"server-{time.time():.0f}.log", "w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyter_server",
                "--no-browser",
                "--allow-root",
                f"--port={self.port}",
                f"--IdentityProvider.token={self.token}",
                f"--ServerApp.root_dir={self.root}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                self.request("GET", "/api/status")
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("jupyter server did not start")

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            payload = response.read()
        return json.loads(payload) if payload else {}

    def request_in_background(self, method: str, path: str, body: dict | None = None) -> threading.Thread:
        """Send a request the test will kill the server under (so its answer never comes)."""

        def send() -> None:
            try:
                self.request(method, path, body)
            except OSError:
                pass  # the server was killed under the request, as intended

        thread = threading.Thread(target=send, daemon=True)
        thread.start()
        return thread

    def refused(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        """Status and JSON answer of a request that must fail."""
        try:
            answer = self.request(method, path, body)
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())
        raise AssertionError(f"{method} {path} succeeded: {answer}")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)


def connect(layout: Path, kernel_id: str) -> BlockingKernelClient:
    """A client of a server's kernel, straight from its connection file, once it answers on the
    shell *and* IOPub: IOPub is a subscription, and what a kernel that is already up (a fork
    answers at once) publishes before the subscription took effect is lost."""
    client = BlockingKernelClient(connection_file=str(layout / "runtime" / f"kernel-{kernel_id}.json"))
    client.load_connection_file()
    client.start_channels()
    deadline = time.monotonic() + 60
    while True:
        msg_id = client.kernel_info()
        client.get_shell_msg(timeout=60)  # one reply per request, in order
        if _published_for(client, msg_id, within=1.0) or time.monotonic() > deadline:
            return client


def _published_for(client: BlockingKernelClient, msg_id: str, within: float) -> bool:
    """Whether IOPub carries a message of request ``msg_id`` within ``within`` seconds."""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = client.get_iopub_msg(timeout=left)
        except queue.Empty:
            return False
        if message["parent_header"].get("msg_id") == msg_id:
            return True
    return False


class QuietReport:
    """A Reporter (``kernel_provider.envs.operations``) for operations a test calls directly."""

    def log(self, line: str) -> None:
        pass

    def step(self, progress: float, message: str) -> None:
        pass

    def point_of_no_return(self) -> None:
        pass


# --- planning and running containers ---------------------------------------------------------


def make_plan(*overlays, writable=False, fakeroot=False, config=None) -> ContainerPlan:
    """Plan a stack from the configured image directories with the real probes, as a kernel start does."""
    config = config or CondaTainerConfig()
    return plan_container(
        StackRequest(overlays=list(overlays), writable=writable, fakeroot=fakeroot),
        scan(config.image_dirs, config.distro),
        ImageProbe(),
        environ=os.environ,
        cwd=os.getcwd(),
        uid=os.getuid(),
    )


@asynccontextmanager
async def acquired(manager: InstanceManager, plan: ContainerPlan, kernel_id: str = "k"):
    """A private instance of ``plan`` for the block; released (stopped) after it."""
    instance = await manager.acquire(plan, kernel_id, share=False)
    try:
        yield instance
    finally:
        await manager.release(instance, kernel_id)


async def exec_in(manager: InstanceManager, instance: Instance, argv: list[str]) -> CommandResult:
    """Run ``argv`` in the instance with the kernel's environment file, as a kernel runs."""
    return await run(command.instance_exec_argv(manager.apptainer, instance.name, str(instance.env_file), argv), 60)


@dataclass
class Facts:
    """Stated facts about images, instead of unsquashfs/debugfs probes."""

    envs: dict[str, envfile.OverlayEnv] = field(default_factory=dict)
    without_bin: set[str] = field(default_factory=set)
    owners: dict[str, int] = field(default_factory=dict)
    devices: set[str] = field(default_factory=set)

    def overlay_env(self, overlay):
        return self.envs.get(overlay.name, envfile.OverlayEnv())

    def has_bin(self, overlay):
        return overlay.name not in self.without_bin

    def image_owner(self, overlay):
        return self.owners.get(overlay.name)

    def device_exists(self, path):
        return path in self.devices


@pytest.fixture(scope="session")
def conda_channel(tmp_path_factory):
    """A local conda channel root with real test packages (``tests/channel.py``).

    Built once per content of ``tests/channel.py`` under ``$JCT_CACHE/channel/<hash>/`` (else
    in the session's tmp dir) and reused. ``.root`` must be bound into the container at the
    same path; ``.url`` is ``file://ROOT/conda-forge`` for ``-c``; ``.env`` is
    ``{"MAMBA_CHANNEL_ALIAS": "file://ROOT"}``, which makes the channel names CondaTainer's
    wrappers use by default (``conda-forge``, ``bioconda``) resolve to ROOT.
    """
    import importlib.util

    from channel import LocalChannel, ensure_channel

    # Built in a child process (tests/channel.py): only check here that the packages are there.
    missing = [name for name in ("rattler", "rattler_build") if importlib.util.find_spec(name) is None]
    if missing:
        pytest.fail(
            f"the test channel needs py-rattler and py-rattler-build (missing: {', '.join(missing)}): "
            "pip install -e '.[test]'"
        )
    try:
        root = ensure_channel(CACHE / "channel")
    except OSError:
        root = ensure_channel(tmp_path_factory.mktemp("channel"))
    return LocalChannel(root)


@pytest.fixture
def channel_env(conda_channel, monkeypatch):
    """Containers resolve conda-forge to the local channel (as a site mirror would).

    Tests ask for it before the server's fixtures: the server reads its configuration as it starts.
    """
    for key, value in conda_channel.env.items():
        monkeypatch.setenv(key, value)
    return conda_channel


@pytest.fixture(scope="session")
def slurm_cluster():
    """A private single-node SLURM cluster for the session (``tests/slurm_cluster.py``).

    Fails (never skips) when SLURM is not installed: scripts/setup.sh installs it. Its
    directory is under /tmp because munged wants its socket's directories traversable.
    """
    import tempfile

    from slurm_cluster import SlurmCluster

    root = Path(tempfile.mkdtemp(prefix="jct-slurm-"))
    cluster = SlurmCluster(root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def api(jp_fetch, jp_serverapp):
    """Call our REST API; return (status, body: decoded JSON, or text for text/plain answers)."""

    async def call(method: str, *path: str, body=None, params=None, headers=None, raise_error=False):
        kwargs = {"method": method, "raise_error": raise_error}
        if body is not None:
            kwargs["body"] = json.dumps(body)
        if method in ("POST", "DELETE"):
            kwargs["allow_nonstandard_methods"] = True  # DELETE with a body; POST without one
        if params:
            kwargs["params"] = params
        if headers is not None:
            kwargs["headers"] = headers
        response = await jp_fetch("condatainer", "api", *path, **kwargs)
        text = (response.body or b"").decode()
        if response.headers.get("Content-Type", "").startswith("text/plain"):
            return response.code, text
        return response.code, json.loads(text or "null")

    return call


async def wait_job(api, job_id: str, timeout: float = 180) -> dict:
    """Poll a job of the REST API until it ends; its final JSON."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        _, job = await api("GET", "jobs", job_id)
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        await asyncio.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish: {job}")


async def run_job(api, *path, body) -> dict:
    """POST a request that answers with a job (202), wait for it; the job, which must have succeeded."""
    status, data = await api("POST", *path, body=body)
    assert status == 202, (status, data)
    job = await wait_job(api, data["job"]["id"])
    assert job["state"] == "succeeded", job
    return job


@asynccontextmanager
async def env_kernel(api, serverapp, name: str, packages: list[str]):
    """A new writable env made through the REST API, and a kernel on ``python/3.11`` + it in that
    server, ready: ``(kernel id, client)``; shut down afterwards."""
    from kernel_provider.kernel.kernelspecs import custom_spec

    _, data = await api("POST", "overlays", body={"name": name, "size_mb": 128, "packages": packages})
    job = await wait_job(api, data["job"]["id"])
    assert job["state"] == "succeeded", job
    spec = custom_spec(["python/3.11", name], label=name, writable=True)
    KernelspecStore().write(spec)
    async with server_kernel(serverapp, spec.name) as started:
        yield started


@asynccontextmanager
async def server_kernel(serverapp, kernel_name: str):
    """A kernel of that kernelspec in the test's server, ready: ``(kernel id, client)``; shut down afterwards."""
    manager = serverapp.kernel_manager
    kernel_id = await manager.start_kernel(kernel_name=kernel_name)
    client = manager.get_kernel(kernel_id).client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=120)
        yield kernel_id, client
    finally:
        client.stop_channels()
        await manager.shutdown_kernel(kernel_id)


def terminal_of(serverapp, model: dict):
    """The terminado terminal of a terminal model the server answered with."""
    return serverapp.web_app.settings["terminal_manager"].get_terminal(model["name"])


_ECHOES = itertools.count()


def printed(term, command: str, timeout: float = 60) -> str:
    """What ``echo command`` printed in a terminado terminal.

    The typed line is quoted so that its echo never reads like its output: a terminal may echo
    it twice (``srun --pty``: the local pty before srun takes it over, then the remote one)."""
    marker = f"END{next(_ECHOES)}"
    term.ptyproc.write(f"echo TE''RM- {command} -{marker[:1]}''{marker[1:]}\r")
    out = wait_until(lambda: f"-{marker}" in (out := "".join(term.read_buffer)) and out, timeout, marker)
    return out.split(f"-{marker}")[0].rsplit("TERM- ", 1)[-1].strip()


async def reply_to(client, msg_id: str, timeout: float = 120) -> dict:
    """The shell reply to request ``msg_id`` (skipping replies to earlier ones, e.g. the
    ``kernel_info`` requests of ``wait_for_ready``)."""
    while True:
        reply = await client.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply


async def run_cell(client, code: str, timeout: float = 180) -> tuple[str, dict | None]:
    """Execute code in a kernel: (its stdout text, the error content or None)."""
    out, error = [], None

    def hook(msg):
        nonlocal error
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            error = msg["content"]

    await client.execute_interactive(code, output_hook=hook, timeout=timeout)
    return "".join(out), error


def pytest_terminal_summary(terminalreporter):
    """Print the crash-safety matrix (tests/test_crash_matrix.py) when it ran."""
    import sys

    module = sys.modules.get("test_crash_matrix")
    if module is None or not module.MATRIX:
        return
    write = terminalreporter.write_line
    terminalreporter.section("crash-safety matrix: operation × step × {cancel, kill} → env state")
    write(f"{'operation':<10} {'step':<8} {'cancel':<10} {'kill':<10}")
    cells = {(op, step, mode): outcome for op, step, mode, outcome in module.MATRIX}
    for op, steps in module.STEPS.items():
        for step in steps:
            cancel, kill = cells.get((op, step, "cancel"), "-"), cells.get((op, step, "kill"), "-")
            write(f"{op:<10} {step:<8} {cancel:<10} {kill:<10}")
    counts = {}
    for *_, outcome in module.MATRIX:
        counts[outcome] = counts.get(outcome, 0) + 1
    write(
        f"{len(module.MATRIX)} cells: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + "; no third state"
    )
