"""Shared fixtures: the locally built CondaTainer images and an isolated user layout.

Integration tests need a working Apptainer and the images from
``scripts/build-images.sh`` (the README's test command provides both). When they are
missing the tests fail with the reason; they are never skipped silently.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kernel_provider.host.process import apptainer_env

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


@pytest.fixture
def image_layout(tmp_path, monkeypatch, built_images):
    """A private image directory and CondaTainer state for one test.

    The read-only images are hard-linked (or copied) from the cache; the writable
    ``env.img`` is a fresh copy, so a test can write into it.
    """
    images = tmp_path / "images"
    images.mkdir()
    for name in REQUIRED_IMAGES[:-1]:
        _link_or_symlink(built_images / name, images / name)
        if (built_images / f"{name}.env").exists():
            shutil.copy(built_images / f"{name}.env", images / f"{name}.env")
    sparse_copy(built_images / "testenv.img", images / "env.img")
    (tmp_path / "state").mkdir()
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(USER_CACHE))
    monkeypatch.setenv("CNT_EXTRA_IMAGE_DIRS", str(images))
    monkeypatch.chdir(tmp_path)
    return tmp_path


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
    return image_layout


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


def running_instances() -> set[str]:
    """This user's running instance names, straight from Apptainer."""
    out = subprocess.run(
        ["apptainer", "instance", "list"], capture_output=True, text=True, env=apptainer_env(), check=True
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
        pytest.fail(f"the test channel needs py-rattler and py-rattler-build (missing: {', '.join(missing)}): pip install -e '.[test]'")
    try:
        root = ensure_channel(CACHE / "channel")
    except OSError:
        root = ensure_channel(tmp_path_factory.mktemp("channel"))
    return LocalChannel(root)


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
    write(f"{len(module.MATRIX)} cells: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + "; no third state")
