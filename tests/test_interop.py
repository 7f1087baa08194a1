"""The real CondaTainer CLI and this project on one set of images, both directions.

Users run ``condatainer`` next to JupyterLab on the same image directories. These tests run the
real CLI (``JCT_CONDATAINER``, else ``condatainer`` on PATH; ``JCT_CONDATAINER_V150``, else
``condatainer-v1.5.0`` next to it, for ``instance``, which newer releases dropped) against a
``jupyter server`` with our extension, on a private image directory and state:

- our kernels and REST API on what the CLI made or changed: an env made by ``condatainer overlay
  create -- PKGS`` and changed by ``condatainer exec -w … mm-install``, a ``.sqf`` built from a
  build script with its ``.env`` sidecar;
- the CLI on what our server made: ``list``, ``exec``, ``rm`` of a REST-created env and of its
  frozen ``.sqf``, and v1.5.0's ``instance start/list/exec`` on them and on our kernel's instance
  (whose state file the CLI reads);
- the shared lock protocol: ``condatainer rm`` refused while our kernel uses an image, our DELETE
  refused while ``condatainer exec`` holds one;
- the kernel's environment against ``condatainer exec``'s for the same stack.

Differences on purpose, stated where they are tested (and in the README): the kernel runs with
``--cleanenv`` (the CLI passes the host's whole environment into the container); sidecar variables
that refer to each other are expanded by us (the CLI leaves that to Apptainer, which evaluates them
in no fixed order, so such a variable is sometimes empty under the CLI); our kernels activate their
conda env (``CONDA_SHLVL``), the CLI only sets ``CONDA_PREFIX``.

The CLI runs with its own HOME, ``CNT_ROOT`` and build-scripts directory, and the same
``XDG_STATE_HOME``, image directory and Apptainer instance registry (``APPTAINER_CONFIGDIR``) as
the server. Conda packages come from the local test channel (``tests/channel.py``), bound into the
CLI's containers with ``APPTAINER_BIND``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import (
    DEBUGFS,
    USER_CACHE,
    Server,
    connect,
    free_port,
    populate_images,
    sparse_copy,
    sync_specs,
    wait_until,
)

from kernel_provider.host.locks import held_by_anyone
from kernel_provider.host.process import apptainer_env
from kernel_provider.kernel.kernelspecs import KernelspecStore, custom_spec

pytestmark = [pytest.mark.integration, pytest.mark.interop]

HOST_MKSQUASHFS_FILES = ("/usr/bin/mksquashfs", "/usr/lib/x86_64-linux-gnu/liblzo2.so.2")


def find_cli() -> tuple[str, str]:
    """The newest CLI and v1.5.0 (which still has ``instance``); fail saying where they are looked for."""
    newest = os.environ.get("JCT_CONDATAINER") or shutil.which("condatainer")
    if not newest or not os.access(newest, os.X_OK):
        pytest.fail(
            "the CondaTainer CLI is missing: set JCT_CONDATAINER to it or put condatainer on PATH "
            "(scripts/test.sh uses ../shared/tools/condatainer/), or deselect these tests with -m 'not interop'"
        )
    v150 = os.environ.get("JCT_CONDATAINER_V150") or str(Path(newest).with_name("condatainer-v1.5.0"))
    if not os.access(v150, os.X_OK):
        pytest.fail(f"CondaTainer v1.5.0 is missing ({v150}): set JCT_CONDATAINER_V150, or -m 'not interop'")
    return newest, v150


class Cli:
    """Runs the CLI as a user would, global flags first, with its environment."""

    def __init__(self, binary: str, env: dict[str, str], cwd: Path):
        self.binary, self.env, self.cwd = binary, env, cwd

    def run(self, *args: str, ok: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [self.binary, *args], env=self.env, cwd=self.cwd, capture_output=True, text=True, timeout=timeout
        )
        if ok and result.returncode != 0:
            pytest.fail(f"condatainer {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def start(self, *args: str) -> subprocess.Popen:
        """In its own process group, so the test can stop the CLI and its container together."""
        return subprocess.Popen(
            [self.binary, *args],
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )


class World:
    """One image directory, one server with our extension, the CLI, for the module."""

    def __init__(self, root: Path, server: Server, cli: Cli, v150: Cli):
        self.root, self.server, self.cli, self.v150 = root, server, cli, v150
        self.images = root / "images"

    def overlays(self) -> dict[str, dict]:
        return {row["name"]: row for row in self.server.request("GET", "/condatainer/api/overlays")["overlays"]}

    def wait_job(self, job: dict, timeout: float = 180) -> dict:
        def ended():
            now = self.server.request("GET", f"/condatainer/api/jobs/{job['id']}")
            return now if now["state"] in ("succeeded", "failed", "cancelled") else None

        return wait_until(ended, timeout, f"job {job['id']} ({job.get('kind', '')}) to end")


@pytest.fixture(scope="module")
def world(tmp_path_factory, built_images, conda_channel):
    newest, v150 = find_cli()
    root = tmp_path_factory.mktemp("ix")
    images = root / "images"
    populate_images(images, built_images)
    for sub in ("state", "runtime", "data", "config", "apptainer", "cli-home", "cli-root", "build-scripts"):
        (root / sub).mkdir()
    with pytest.MonkeyPatch.context() as patch:
        shared = {
            "XDG_STATE_HOME": root / "state",  # our instance state files, which v1.5.0's instance exec reads
            "CNT_EXTRA_IMAGE_DIRS": images,
            "APPTAINER_CONFIGDIR": root / "apptainer",  # one private instance registry for both
            "JUPYTER_RUNTIME_DIR": root / "runtime",
            "JUPYTER_DATA_DIR": root / "data",
            "JUPYTER_CONFIG_DIR": root / "config",
            "JUPYTER_PATH": root / "data",
            "XDG_CACHE_HOME": USER_CACHE,
            **conda_channel.env,
        }
        for key, value in shared.items():
            patch.setenv(key, str(value))
        patch.chdir(root)
        cli_env = apptainer_env() | {
            "HOME": str(root / "cli-home"),
            "XDG_CONFIG_HOME": str(root / "cli-home" / ".config"),
            "XDG_DATA_HOME": str(root / "cli-home" / ".local" / "share"),
            "XDG_CACHE_HOME": str(root / "cli-home" / ".cache"),
            "CNT_ROOT": str(root / "cli-root"),
            "CNT_EXTRA_BUILD_DIRS": str(root / "build-scripts"),
            "NO_COLOR": "1",
            "PATH": f"{os.environ['PATH']}:/usr/sbin:/sbin",  # mke2fs, debugfs: not on an ordinary user's PATH
            # The channel, and the host's mksquashfs for builds (the test base image has none).
            "APPTAINER_BIND": ",".join([str(conda_channel.root), *(f"{f}:{f}:ro" for f in HOST_MKSQUASHFS_FILES)]),
        }
        if os.getuid() == 0:
            # The CLI turns --fakeroot on for any root-owned env, even for root (its check looks at
            # the owner before comparing it with the caller), and root has no subuid range here.
            # A debugfs that cannot answer that one question keeps it off; every other call goes through.
            shim = root / "cli-bin"
            shim.mkdir()
            (shim / "debugfs").write_text(
                f'#!/bin/sh\ncase "$*" in *"stat upper"*) exit 1;; esac\nexec {DEBUGFS} "$@"\n'
            )
            (shim / "debugfs").chmod(0o755)
            cli_env["PATH"] = f"{shim}:{cli_env['PATH']}"
        sync_specs()
        server = Server(root, free_port())
        server.start()
        try:
            yield World(root, server, Cli(newest, cli_env, root), Cli(v150, cli_env, root))
        finally:
            for kernel in server.request("GET", "/api/kernels"):
                server.request("DELETE", f"/api/kernels/{kernel['id']}")
            server.stop()
            subprocess.run(
                [v150, "-y", "instance", "stop", "--all"], env=cli_env, cwd=root, capture_output=True, timeout=120
            )


class Kernel:
    """A kernel of the world's server on a stack we register; shut down on leaving."""

    def __init__(self, world: World, overlays: list[str], label: str, writable: bool = False):
        self.world = world
        self.writable_image = world.images / f"{overlays[-1]}.img" if writable else None
        self.spec = custom_spec(overlays, label=label, writable=writable)
        KernelspecStore().write(self.spec)

    def __enter__(self) -> Kernel:
        self.id = self.world.server.request("POST", "/api/kernels", {"name": self.spec.name})["id"]
        self.client = connect(self.world.root, self.id)
        return self

    def run(self, code: str) -> str:
        out, errors = [], []

        def hook(msg):
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                errors.append("\n".join(msg["content"]["traceback"]))

        self.client.execute_interactive(code, output_hook=hook, timeout=120)
        assert not errors, errors
        return "".join(out)

    def instance(self) -> str:
        state = self.world.root / "state" / "condatainer" / "instance"
        (record,) = [
            json.loads(p.read_text())
            for p in state.glob("*.json")
            if self.id in json.loads(p.read_text()).get("jupyter_condatainer", {}).get("kernels", [])
        ]
        return record["name"]

    def __exit__(self, *exc) -> None:
        self.client.stop_channels()
        self.world.server.request("DELETE", f"/api/kernels/{self.id}")
        if self.writable_image:
            # The shutdown answers at once; the instance (a writable stack: never kept warm) stops behind it.
            path = str(self.writable_image)
            wait_until(lambda: not held_by_anyone(path), 60, f"the instance to let go of {path}")


# --- our kernels and server on what the CLI made ------------------------------------------------


def test_a_kernel_on_an_env_the_cli_created_and_changed(world):
    cli, images = world.cli, world.images
    cli.run("-y", "overlay", "create", str(images / "clienv.img"), "--sparse", "-s", "256M", "--", "zlib", "demo-tool")
    cli.run("-q", "exec", "-w", "-o", "clienv", "mm-install", "-y", "demopkg")

    row = world.overlays()["clienv"]
    assert row["kind"] == "img" and row["writable"] and not row["in_use"], row
    listing = world.server.request("GET", "/condatainer/api/overlays/clienv/packages")
    assert {"zlib", "demo-tool", "libdemo", "demopkg"} <= {p["name"] for p in listing["packages"]}, listing
    history = world.server.request("GET", "/condatainer/api/overlays/clienv/history")["revisions"]
    assert [r["command"] for r in history] == ["create zlib demo-tool", "install demopkg"], history

    with Kernel(world, ["python/3.11", "clienv"], "clienv", writable=True) as kernel:
        out = kernel.run(
            "import demopkg, subprocess; print(demopkg.__file__); print(subprocess.getoutput('demo-tool'))"
        )
        assert out.splitlines() == [
            "/ext3/env/lib/python3.11/site-packages/demopkg/__init__.py",
            "demo-tool 1.0 libdemo 2.0",
        ], out
        # Our REST install goes through the kernel's instance into the CLI's env.
        job = world.server.request("POST", "/condatainer/api/overlays/clienv/packages", {"specs": ["libdemo=1.0"]})
        assert world.wait_job(job["job"])["state"] == "succeeded"
        assert kernel.run("print(subprocess.getoutput('demo-tool'))").strip() == "demo-tool 1.0 libdemo 1.0"
    # ... and the CLI sees that change.
    assert cli.run("-q", "exec", "-o", "clienv", "demo-tool").stdout.strip() == "demo-tool 1.0 libdemo 1.0"


BUILD_SCRIPT = """\
#!/bin/bash
#WHATIS:tool VERSION - built by the CondaTainer CLI from a build script
#ENV:TOOL_HOME=$app_root
#ENVNOTE:root of the tool
#ENV:TOOL_DATA=$app_root/share
mkdir -p "$target_dir/bin" "$target_dir/share"
printf '#!/bin/sh\\necho "tool in $TOOL_HOME, data in $TOOL_DATA"\\n' > "$target_dir/bin/tool"
chmod 755 "$target_dir/bin/tool"
"""


def test_a_kernel_on_sqf_overlays_the_cli_built_from_build_scripts(world):
    """v1.5.0 writes the script's variables into the ``.env`` sidecar; the newest CLI writes only
    ``#WHATIS`` there and reads them from the script it embeds (``/cnt/NAME/VERSION/.cnt-build-script``)."""
    local = {"1.0": ["--local", "-y", "create"], "2.0": ["-y", "create", "--no-prebuilt", "--no-submit"]}
    for version, cli in [("1.0", world.v150), ("2.0", world.cli)]:
        script = world.root / "build-scripts" / "tool" / version  # CondaTainer's layout: NAME/VERSION
        script.parent.mkdir(exist_ok=True)
        script.write_text(BUILD_SCRIPT.replace("VERSION", version))
        cli.run(*local[version], f"tool/{version}")
        assert (world.images / f"tool--{version}.sqf").is_file()
    sidecar = (world.images / "tool--1.0.sqf.env").read_text()
    assert "TOOL_HOME=/cnt/tool/1.0" in sidecar and "TOOL_DATA=/cnt/tool/1.0/share" in sidecar, sidecar

    rows = world.overlays()
    for version in ("1.0", "2.0"):
        row = rows[f"tool/{version}"]
        assert (
            row["kind"] == "sqf"
            and row["whatis"] == f"tool {version} - built by the CondaTainer CLI from a build script"
        )
        assert row["notes"]["TOOL_HOME"] == "root of the tool", row
        with Kernel(world, ["python/3.11", f"tool/{version}"], f"tool{version}") as kernel:
            out = kernel.run("import subprocess; print(subprocess.getoutput('tool'))")
        assert out.strip() == f"tool in /cnt/tool/{version}, data in /cnt/tool/{version}/share", out


# --- the CLI on what our server made --------------------------------------------------------------


def test_the_cli_lists_runs_and_removes_envs_and_frozen_overlays_our_server_made(world):
    server, cli, images = world.server, world.cli, world.images
    job = server.request(
        "POST", "/condatainer/api/overlays", {"name": "made", "size_mb": 256, "packages": ["demo-tool"]}
    )
    assert world.wait_job(job["job"])["state"] == "succeeded"
    job = server.request("POST", "/condatainer/api/overlays/made/freeze", {"name": "frozen", "version": "1.0"})
    assert world.wait_job(job["job"])["state"] == "succeeded"

    listed = cli.run("list", "-1").stdout.split()
    assert {"made", "frozen/1.0", "python/3.11"} <= set(listed), listed
    whatis = cli.run("list", "-w", "frozen").stdout
    assert "conda env made revision" in whatis, whatis
    for overlay in ("frozen/1.0", "made"):
        out = cli.run("-q", "exec", "-o", overlay, "demo-tool").stdout
        assert out.strip() == "demo-tool 1.0 libdemo 2.0", (overlay, out)

    # v1.5.0's instances on them: its `instance list` is Apptainer's, in the registry our server uses too.
    v150 = world.v150
    v150.run("-q", "instance", "start", "-o", "frozen/1.0", "-o", "made", "cnt-made")
    try:
        assert "cnt-made" in v150.run("instance", "list").stdout
        out = v150.run("-q", "instance", "exec", "cnt-made", "sh", "-c", "demo-tool; echo $CONDA_PREFIX").stdout
        assert out.split("\n")[:2] == ["demo-tool 1.0 libdemo 2.0", "/ext3/env"], out
        assert world.overlays()["made"]["in_use"], "the CLI's instance holds the env"
    finally:
        v150.run("-q", "instance", "stop", "cnt-made")

    cli.run("-y", "rm", "frozen/1.0")
    assert not (images / "frozen--1.0.sqf").exists() and not (images / "frozen--1.0.sqf.env").exists()
    cli.run("-y", "rm", "made")
    assert not (images / "made.img").exists()
    assert not {"made", "frozen/1.0"} & set(world.overlays())


# --- the lock protocol, both ways -----------------------------------------------------------------


def test_condatainer_rm_is_refused_while_our_kernel_uses_an_image(world):
    images = world.images
    sparse_copy(images / "env.img", images / "inuse.img")
    shutil.copy(images / "hello--1.0.sqf", images / "inuse--1.0.sqf")  # our own (root's cannot be removed)
    with Kernel(world, ["python/3.11", "inuse/1.0", "inuse"], "inuse", writable=True) as kernel:
        for name, image in [("inuse/1.0", "inuse--1.0.sqf"), ("inuse", "inuse.img")]:
            refused = world.cli.run("-y", "rm", name, ok=False)
            assert (images / image).exists(), f"condatainer rm removed {image} under a running kernel"
            assert "in use" in refused.stdout + refused.stderr, refused
        # v1.5.0 sees our kernel's instance and runs in it with the environment of our state file.
        instance = kernel.instance()
        assert instance in world.v150.run("instance", "list").stdout
        out = world.v150.run("-q", "instance", "exec", instance, "sh", "-c", "echo $IN_CONDATAINER $CONDA_PREFIX")
        assert out.stdout.strip() == "1 /ext3/env", out
    wait_until(lambda: not held_by_anyone(str(images / "inuse--1.0.sqf")), 60, "the instance to let go of inuse/1.0")
    world.cli.run("-y", "rm", "inuse/1.0")
    world.cli.run("-y", "rm", "inuse")
    assert not (images / "inuse--1.0.sqf").exists() and not (images / "inuse.img").exists()


@contextlib.contextmanager
def held_by_cli(world: World, env: str, *options: str):
    """``condatainer exec [OPTIONS] … -o ENV`` running until the block ends, once it has ENV.img
    mounted; the CLI's process. The command ends by itself once told to, as a user's command would:
    a killed CLI leaves Apptainer's FUSE mounts (and their lock on the env) behind for a while."""
    image = str(world.images / f"{env}.img")
    release = world.root / f"release-{env}"
    release.unlink(missing_ok=True)
    wait_for_release = f"while [ ! -e {release} ]; do sleep 0.2; done"
    process = world.cli.start("-q", "exec", *options, "-o", env, "sh", "-c", wait_for_release)
    try:
        wait_until(lambda: held_by_anyone(image), 60, f"condatainer exec to mount {env}.img")
        yield process
    finally:
        release.touch()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
    wait_until(lambda: not held_by_anyone(image), 60, "the CLI's container to end")


def test_our_delete_is_refused_while_condatainer_exec_holds_an_image(world):
    images = world.images
    sparse_copy(images / "env.img", images / "held.img")
    shutil.copy(images / "hello--1.0.sqf", images / "held--1.0.sqf")
    with held_by_cli(world, "held", "-o", "held/1.0"):
        rows = world.overlays()
        assert rows["held/1.0"]["in_use"] and rows["held"]["in_use"], rows
        for name in ("held/1.0", "held"):
            status, answer = world.server.refused("DELETE", f"/condatainer/api/overlays/{name}")
            assert status == 409 and "in use" in answer["message"], answer
    for name in ("held/1.0", "held"):
        world.server.request("DELETE", f"/condatainer/api/overlays/{name}")
    assert not (images / "held--1.0.sqf").exists() and not (images / "held.img").exists()


def test_an_env_condatainer_exec_holds_is_refused_up_front_naming_its_process(world):
    """Apptainer's own lock on an env a container that is not ours has mounted (an OFD lock,
    which flock does not see): a writable kernel, an install, a removal and a delete are refused
    before anything starts, naming the CLI's process; read-only, a terminal may share the env, and
    once the CLI writes to it, the terminal is refused as well."""
    sparse_copy(world.images / "env.img", world.images / "busy.img")
    spec = custom_spec(["python/3.11", "busy"], label="busy", writable=True)
    KernelspecStore().write(spec)
    refusals = {
        "kernel": ("POST", "/api/kernels", {"name": spec.name}),
        "install": ("POST", "/condatainer/api/overlays/busy/packages", {"specs": ["demo-tool"]}),
        "remove": ("DELETE", "/condatainer/api/overlays/busy/packages", {"specs": ["zlib"]}),
        "delete": ("DELETE", "/condatainer/api/overlays/busy", None),
    }
    with held_by_cli(world, "busy") as cli:
        for what, request in refusals.items():
            status, answer = world.server.refused(*request)
            print(what, status, answer["message"])
            assert status in (409, 500) and "is in use by another program: pid" in answer["message"], answer
            assert f"pid {cli.pid} (" in answer["message"], answer
            assert what != "kernel" or answer["message"].endswith("End that program first."), answer
        terminal = world.server.request("POST", "/condatainer/api/overlays/busy/terminal")
        world.server.request("DELETE", f"/api/terminals/{terminal['name']}")
    with held_by_cli(world, "busy", "-w") as cli:
        status, answer = world.server.refused("POST", "/condatainer/api/overlays/busy/terminal")
        assert status == 409 and "busy is open read-write by another program: pid" in answer["message"], answer
        assert f"pid {cli.pid} (" in answer["message"], answer
    assert world.overlays()["busy"]["in_use"] is False
    world.server.request("DELETE", "/condatainer/api/overlays/busy")


# --- the kernel's environment and condatainer exec's ------------------------------------------


PRINT_ENV = "import json, os; print(json.dumps(dict(os.environ)))"
SAME = (
    "IN_CONDATAINER",
    "PATH",
    "PS1",
    "LC_ALL",
    "LANG",
    "CURL_CA_BUNDLE",
    "SSL_CERT_FILE",
    "FPATH",
    "HELLO_HOME",
    "MAMBA_ROOT_PREFIX",
    "CONDA_PREFIX",
    "CONDA_DEFINE_ENV",
    "RETICULATE_PYTHON",
    "CNT_CONDA_PREFIX",
)


def test_the_kernel_environment_is_what_condatainer_exec_sets_for_the_stack(world):
    world.cli.run("-y", "overlay", "create", str(world.images / "envcheck.img"), "--sparse", "-s", "128M")
    stack = ["python/3.11", "hello/1.0", "envcheck"]
    cli_args = [arg for overlay in stack for arg in ("-o", overlay)]
    started = time.monotonic()
    cli = json.loads(world.cli.run("-q", "exec", "-w", *cli_args, "python", "-c", PRINT_ENV).stdout)
    print(f"condatainer exec: {time.monotonic() - started:.1f} s")
    with Kernel(world, stack, "envcheck", writable=True) as kernel:
        ours = json.loads(kernel.run(PRINT_ENV))
    assert {key: ours.get(key) for key in SAME} == {key: cli.get(key) for key in SAME}
    assert ours["PATH"].startswith("/ext3/env/bin:/cnt/hello/1.0/bin:/cnt/python/3.11/bin:"), ours["PATH"]
    # On purpose: HELLO_GREETING=hi from $HELLO_HOME refers to another sidecar variable. We expand it;
    # the CLI passes both as --env and Apptainer expands them in no fixed order (often empty).
    assert ours["HELLO_GREETING"] == "hi from /cnt/hello/1.0"
    assert cli["HELLO_GREETING"] in ("hi from /cnt/hello/1.0", "hi from "), cli["HELLO_GREETING"]
    # On purpose: the kernel runs with --cleanenv; the CLI passes the host's environment in.
    assert cli["CNT_ROOT"] and "CNT_ROOT" not in ours and "JUPYTER_RUNTIME_DIR" not in ours
    # On purpose: our kernels activate the env (conda activate's variables); the CLI does not.
    assert ours["CONDA_SHLVL"] == "1" and "CONDA_SHLVL" not in cli
