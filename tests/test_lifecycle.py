"""Env lifecycle for real: history, rollback, export/lock, freeze to .sqf, activation.

The integration tests use a real jupyter_server with the extension (pytest-jupyter), real
Apptainer, the local test channel of ``tests/channel.py`` (``MAMBA_CHANNEL_ALIAS`` makes
``conda-forge`` mean it), and kernels started by the server's own kernel manager.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import QuietReport, held_writable, run_cell, run_job, wait_job

from kernel_provider.envs.envmeta import EnvUnreadableError, read_env_meta
from kernel_provider.envs.operations import read_conda_meta
from kernel_provider.host.process import apptainer_env
from kernel_provider.model.overlays import Overlay

BASE_IMAGE = "ubuntu24--base_image.sif"


@pytest.fixture
def jp_server_config(image_layout, channel_env):
    return {"ServerApp": {"jpserver_extensions": {"kernel_provider": True}}}


def names(items) -> set[str]:
    return {item["name"] for item in items}


def packages_of(image) -> list:
    """An image's packages, read on the host (no container of ours has it mounted)."""
    return read_conda_meta(read_env_meta(Overlay.from_path(str(image))))


def package_set(image) -> set[tuple[str, str, str]]:
    return {(p.name, p.version, p.build) for p in packages_of(image)}


def revision_set(revision: dict) -> set[tuple[str, str, str]]:
    return {(p["name"], p["version"], p["build"]) for p in revision["packages"]}


def state_of(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


# --- history, export, rollback, lock ------------------------------------------------------------


@pytest.mark.integration
async def test_history_rollback_and_lock(api, image_layout, channel_env, tmp_path, jp_serverapp):
    images = image_layout / "images"
    image = images / "life.img"
    await run_job(api, "overlays", body={"name": "life", "size_mb": 256, "packages": ["zlib"]})
    await run_job(api, "overlays", "life", "packages", body={"specs": ["demo-tool"]})  # A
    await run_job(api, "overlays", "life", "packages", body={"specs": ["demopkg"]})  # B
    status, data = await api("DELETE", "overlays", "life", "packages", body={"specs": ["demo-tool"]})  # remove A
    assert status == 202
    assert (await wait_job(api, data["job"]["id"]))["state"] == "succeeded"

    status, data = await api("GET", "overlays", "life", "history")
    assert status == 200, data
    revisions = data["revisions"]
    assert [r["number"] for r in revisions] == [0, 1, 2, 3]
    user = getpass.getuser()
    assert all(r["user"] == user and r["time"] and r["via"] for r in revisions), revisions
    create, install_a, install_b, remove_a = revisions
    assert create["command"] == "create life zlib" and names(create["added"]) == {"zlib"}
    assert install_a["command"] == "install demo-tool" and install_a["specs"] == {"update": ["demo-tool"]}
    assert names(install_a["added"]) == {"demo-tool", "libdemo"} and not install_a["removed"]
    assert {(p["name"], p["version"]) for p in install_a["added"]} == {("demo-tool", "1.0"), ("libdemo", "2.0")}
    assert names(install_b["added"]) == {"demopkg", "python"} and not install_b["removed"]
    assert remove_a["command"] == "remove demo-tool" and remove_a["specs"] == {"remove": ["demo-tool"]}
    assert names(remove_a["removed"]) == {"demo-tool", "libdemo"} and not remove_a["added"]
    assert not any(r["changed"] for r in revisions)
    assert names(remove_a["packages"]) == {"zlib", "python", "demopkg"}
    assert package_set(image) == revision_set(remove_a)

    # The CLI reads the same history.
    cli = subprocess.run(
        [sys.executable, "-m", "jupyter", "condatainer", "env", "history", "life"], capture_output=True, text=True
    )
    assert cli.returncode == 0, cli.stderr
    assert "rev 3" in cli.stdout and "remove demo-tool" in cli.stdout and f"by {user}" in cli.stdout

    # Export: environment.yml (asked-for specs + channels) and the @EXPLICIT lock of revision 2.
    status, yml = await api("GET", "overlays", "life", "export", params={"format": "yml", "revision": "2"})
    assert status == 200, yml
    assert "channels:\n  - conda-forge" in yml
    assert [line.strip("- ") for line in yml.split("dependencies:\n", 1)[1].splitlines()] == [
        "zlib",
        "demo-tool",
        "demopkg",
    ]
    status, lock = await api("GET", "overlays", "life", "export", params={"format": "lock", "revision": "2"})
    assert status == 200, lock
    urls = lock.split("@EXPLICIT\n", 1)[1].splitlines()
    assert len(urls) == 5 and all(u.startswith(channel_env.url + "/") and "#" in u for u in urls), urls
    assert any("/libdemo-2.0-" in u for u in urls) and any("/demo-tool-1.0-" in u for u in urls)

    # Bad input: nothing runs, nothing changes.
    before = state_of(image)
    for bad, message in [(9, "no revision 9"), (-1, "no revision -1"), ("2", "must be an integer")]:
        status, data = await api("POST", "overlays", "life", "rollback", body={"revision": bad})
        assert status == 400 and message in data["message"], (bad, data)
    status, data = await api("GET", "overlays", "life", "export", params={"format": "lock", "revision": "7"})
    assert status == 400 and "no revision 7" in data["message"]
    status, data = await api("GET", "overlays", "life", "export", params={"format": "toml"})
    assert status == 400 and "unknown export format" in data["message"]
    assert state_of(image) == before

    # Refused while another container has the env mounted writable (a CondaTainer shell, say).
    with held_writable(image, images / BASE_IMAGE, "held-lifecycle-test"):
        status, data = await api("POST", "overlays", "life", "rollback", body={"revision": 2})
        assert status == 409 and "life is in use by another program" in data["message"], data
        # What debugfs would read now may be stale: reading is refused, saying why.
        for path, params in [("history", None), ("packages", None), ("export", {"format": "lock"})]:
            status, data = await api("GET", "overlays", "life", path, params=params)
            assert status == 409 and "life is open read-write in another container" in data["message"], data
        # The operation itself refuses too (the CLI, or a container mounting it after the check).
        from kernel_provider.envs.lifecycle import Lifecycle

        operations = jp_serverapp.web_app.settings["condatainer_operations"]
        with pytest.raises(EnvUnreadableError, match="open read-write in another container"):
            await Lifecycle(operations).rollback(QuietReport(), "life", 2)
    assert package_set(image) == revision_set(remove_a)
    assert len((await api("GET", "overlays", "life", "history"))[1]["revisions"]) == 4

    # Rollback to revision 2: exactly its packages, recorded as revision 4.
    job = await run_job(api, "overlays", "life", "rollback", body={"revision": 2})
    assert "revision 2" in job["message"]
    _, data = await api("GET", "overlays", "life", "history")
    revisions = data["revisions"]
    assert len(revisions) == 5
    rollback = revisions[4]
    assert rollback["command"] == "rollback to revision 2" and rollback["user"] == user
    assert {(p["name"], p["version"]) for p in rollback["added"]} == {("demo-tool", "1.0"), ("libdemo", "2.0")}
    assert not rollback["removed"] and not rollback["changed"]
    assert revision_set(rollback) == revision_set(revisions[2])
    assert package_set(image) == revision_set(revisions[2])
    assert sorted(rollback["requested"]) == sorted(revisions[2]["requested"])

    # The lock of revision 2 recreates the same env in a new .img, with nothing but the wrappers.
    lock_file = tmp_path / "rev2.lock.txt"
    lock_file.write_text(lock)
    copy = tmp_path / "copy.img"
    subprocess.run(
        ["apptainer", "overlay", "create", "--size", "128", "--create-dir", "/ext3/env", str(copy)],
        check=True,
        capture_output=True,
        env=apptainer_env(),
    )
    result = subprocess.run(
        [
            "apptainer",
            "exec",
            "--containall",
            "--cleanenv",
            "--overlay",
            f"{copy}:rw",
            "--bind",
            str(channel_env.root),
            "--bind",
            str(tmp_path),
            "--env",
            "CNT_CONDA_PREFIX=/ext3/env",
            str(images / BASE_IMAGE),
            "mm-create",
            "-y",
            "-f",
            str(lock_file),
        ],
        capture_output=True,
        text=True,
        env=apptainer_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    recreated = {(p.name, p.version, p.build, p.channel) for p in packages_of(copy)}
    original = {(p.name, p.version, p.build, p.channel) for p in packages_of(image)}
    assert recreated == original and len(recreated) == 5


# --- activation, freeze, two kernels on one frozen overlay ---------------------------------------


class Kernels:
    """Kernels of the test server, shut down at the end."""

    def __init__(self, manager):
        self.manager = manager
        self.started = []

    async def start(self, name: str):
        kernel_id = await self.manager.start_kernel(kernel_name=name)
        client = self.manager.get_kernel(kernel_id).client()
        client.start_channels()
        self.started.append((kernel_id, client))
        await client.wait_for_ready(timeout=180)
        return kernel_id, client

    async def shutdown(self, kernel_id=None):
        for kid, client in list(self.started):
            if kernel_id in (None, kid):
                client.stop_channels()
                await self.manager.shutdown_kernel(kid)
                self.started.remove((kid, client))


PROBE = (
    "import json, os, site, sys\n"
    "print(json.dumps({k: os.environ.get(k) for k in ('LIFECYCLE_GREETING', 'LIFECYCLE_VAR', 'CONDA_PREFIX', "
    "'JCT_HOST_ONLY', 'CONDARC', 'CONDA_ENVS_PATH', 'PYTHONUSERBASE', 'PYTHONNOUSERSITE')} | "
    "{'user_site': site.ENABLE_USER_SITE, 'path': sys.path}))"
)

ACTIVATE = (
    "import json, os\n"
    "os.makedirs('/ext3/env/etc/conda/activate.d', exist_ok=True)\n"
    "open('/ext3/env/etc/conda/activate.d/lifecycle-test.sh', 'w').write("
    "'echo activating >&2\\nexport LIFECYCLE_GREETING=\"hello from $CONDA_PREFIX\"\\n')\n"
    "json.dump({'env_vars': {'LIFECYCLE_VAR': 'from conda-meta/state'}}, open('/ext3/env/conda-meta/state', 'w'))\n"
)


@pytest.mark.integration
async def test_activation_freeze_and_two_kernels(api, image_layout, channel_env, jp_serverapp, monkeypatch):
    from kernel_provider.kernel.kernelspecs import KernelspecStore, custom_spec

    images = image_layout / "images"
    # Variables of the host (the server's environment) that must not reach a kernel.
    home_local = Path.home() / ".local"
    for key, value in {
        "JCT_HOST_ONLY": "leak",
        "CONDARC": "/host/condarc",
        "CONDA_ENVS_PATH": "/host/envs",
        "PYTHONUSERBASE": str(home_local),
    }.items():
        monkeypatch.setenv(key, value)
    await run_job(api, "overlays", body={"name": "src", "size_mb": 256, "packages": ["python=3.11", "demopkg"]})
    spec = custom_spec(["src"], label="src", writable=True, share=True)
    KernelspecStore().write(spec)
    kernels = Kernels(jp_serverapp.kernel_manager)
    try:
        # A writable env kernel: activation scripts and conda env vars, the magic's history.
        kernel_id, client = await kernels.start(spec.name)
        _, error = await run_cell(client, ACTIVATE)
        assert error is None, error
        out, error = await run_cell(client, "%condatainer install libdemo=1.0")
        assert error is None, (out, error)
        history_text, error = await run_cell(client, "%condatainer history")
        assert error is None, error
        lock_text, error = await run_cell(client, "%condatainer export lock")
        assert error is None, error
        await jp_serverapp.kernel_manager.restart_kernel(kernel_id)
        await client.wait_for_ready(timeout=180)
        out, error = await run_cell(client, PROBE)
        assert error is None, error
        seen = json.loads(out)
        await kernels.shutdown(kernel_id)
    finally:
        await kernels.shutdown()
    assert "rev 1" in history_text and "install libdemo=1.0" in history_text and "+ libdemo 1.0" in history_text
    assert "@EXPLICIT" in lock_text and "/libdemo-1.0-" in lock_text
    assert seen["LIFECYCLE_GREETING"] == "hello from /ext3/env"
    assert seen["LIFECYCLE_VAR"] == "from conda-meta/state"
    assert seen["CONDA_PREFIX"] == "/ext3/env"
    for key in ("JCT_HOST_ONLY", "CONDARC", "CONDA_ENVS_PATH", "PYTHONUSERBASE"):
        assert seen[key] is None, (key, seen)
    assert seen["PYTHONNOUSERSITE"] == "1" and seen["user_site"] is False
    assert not any(p.startswith((str(home_local), str(Path.home() / ".conda"))) for p in seen["path"]), seen["path"]
    _, data = await api("GET", "overlays", "src", "history")
    assert data["revisions"][1]["via"] == "%condatainer" and data["revisions"][1]["command"] == "install libdemo=1.0"

    # Bad input for freeze: nothing built, nothing changed.
    hello = images / "hello--1.0.sqf"
    hello_state = state_of(hello), (images / "hello--1.0.sqf.env").read_text()
    status, data = await api("POST", "overlays", "src", "freeze", body={"name": "hello", "version": "1.0"})
    assert status == 409 and "already exists" in data["message"], data
    assert (state_of(hello), (images / "hello--1.0.sqf.env").read_text()) == hello_state
    status, data = await api("POST", "overlays", "src", "freeze", body={"name": "x", "version": "1", "revision": 12})
    assert status == 400 and "no revision 12" in data["message"]
    status, data = await api("POST", "overlays", "src", "freeze", body={"name": "../x", "version": "1"})
    assert status == 400
    # ... while an install runs: refused by the server, and by the env lock (a magic's install).
    status, install = await api("POST", "overlays", "src", "packages", body={"specs": ["zlib"]})
    assert status == 202
    status, data = await api("POST", "overlays", "src", "freeze", body={"name": "frozen", "version": "1.0"})
    assert status == 409 and "install" in data["message"] and "running" in data["message"], data
    assert (await wait_job(api, install["job"]["id"]))["state"] == "succeeded"
    lock = jp_serverapp.web_app.settings["condatainer_operations"].env_lock(str(images / "src.img"))
    lock.acquire()
    try:
        status, data = await api("POST", "overlays", "src", "freeze", body={"name": "frozen", "version": "1.0"})
        assert status == 202
        job = await wait_job(api, data["job"]["id"])
    finally:
        lock.release()
    assert job["state"] == "failed" and "another operation" in job["error"], job
    assert not (images / "frozen--1.0.sqf").exists() and not list(images.glob(".*")), list(images.iterdir())

    # Freeze revision 1 (python, demopkg, libdemo 1.0; zlib came in revision 2).
    job = await run_job(api, "overlays", "src", "freeze", body={"name": "frozen", "version": "1.0", "revision": 1})
    frozen = images / "frozen--1.0.sqf"
    assert frozen.is_file() and not list(images.glob(".*")), list(images.iterdir())
    sidecar = (images / "frozen--1.0.sqf.env").read_text()
    assert "#WHATIS:conda env src revision 1" in sidecar
    listing = subprocess.run(["unsquashfs", "-l", "-d", "", str(frozen)], capture_output=True, text=True).stdout
    assert "/cnt/frozen/1.0/bin/python" in listing and "/cnt/frozen/1.0/share/libdemo/VERSION" in listing
    assert "/cnt/frozen/1.0/lib/python3.11/site-packages/demopkg/__init__.py" in listing
    assert "zlib" not in listing and "/cnt/frozen/1.0/pkgs" not in listing
    _, data = await api("GET", "overlays")
    row = {r["name"]: r for r in data["overlays"]}["frozen/1.0"]
    assert row["kind"] == "sqf" and "revision 1" in row["whatis"]
    # Revision 1 is not the latest: the env's hand-written activation is not part of it.
    assert "/cnt/frozen/1.0/etc/conda/activate.d" not in listing

    # The latest revision carries the activation over; two kernels share the read-only overlay and its instance.
    job = await run_job(api, "overlays", "src", "freeze", body={"name": "frozen", "version": "2.0"})
    kernel = next(name for name, s in KernelspecStore().read_all().items() if s.overlays == ("frozen/2.0",))
    assert kernel in job["message"]
    code = (
        "import demopkg, os\n"
        "try:\n    open('/cnt/frozen/2.0/written', 'w')\nexcept OSError as err:\n    ro = err.strerror\n"
        "print(demopkg.__file__, os.environ.get('LIFECYCLE_GREETING'), os.environ.get('LIFECYCLE_VAR'), ro, sep='|')"
    )
    kernels = Kernels(jp_serverapp.kernel_manager)
    try:
        started = await asyncio.gather(kernels.start(kernel), kernels.start(kernel))
        outputs = await asyncio.gather(*(run_cell(c, code) for _, c in started))
        instances = {jp_serverapp.kernel_manager.get_kernel(k).provisioner.instance.name for k, _ in started}
    finally:
        await kernels.shutdown()
    assert len(instances) == 1, "kernels of one stack share its instance"
    for out, error in outputs:
        assert error is None, error
        path, greeting, variable, read_only = out.strip().split("|")
        assert path == "/cnt/frozen/2.0/lib/python3.11/site-packages/demopkg/__init__.py"
        assert greeting == "hello from /cnt/frozen/2.0" and variable == "from conda-meta/state"
        assert read_only == "Read-only file system"


# --- reading an env that a running kernel has mounted ---------------------------------------------

REVISIONS_SEEN = "print(open('/ext3/env/conda-meta/history').read().count('==> '))"
NEW_PYTHON = "the env now has its own Python 3.11; restart the kernel to use it"


@pytest.mark.integration
async def test_history_of_an_env_a_kernel_has_open(api, image_layout, channel_env, jp_serverapp):
    """REST reads the env as the kernel's container sees it (the .img on disk lags behind), and a
    change that pulls python into an env with none says to restart the kernel."""
    from kernel_provider.kernel.kernelspecs import KernelspecStore, custom_spec

    await run_job(api, "overlays", body={"name": "open", "size_mb": 256, "packages": ["zlib"]})
    spec = custom_spec(["python/3.11", "open"], label="open", writable=True, share=True)
    KernelspecStore().write(spec)

    async def revisions_agree(client) -> int:
        seen, error = await run_cell(client, REVISIONS_SEEN)
        assert error is None, error
        _, data = await api("GET", "overlays", "open", "history")
        assert len(data["revisions"]) == int(seen), (seen, [r["command"] for r in data["revisions"]])
        return int(seen)

    kernels = Kernels(jp_serverapp.kernel_manager)
    try:
        _, client = await kernels.start(spec.name)
        out, error = await run_cell(client, "%condatainer install demopkg")
        assert error is None, (out, error)
        assert f"Note: {NEW_PYTHON}." in out, out
        assert await revisions_agree(client) == 2
        _, listing = await api("GET", "overlays", "open", "packages")
        assert {"zlib", "demopkg", "python"} <= names(listing["packages"])

        # Through the REST API (the change runs in the kernel's instance): the same note.
        job = await run_job(api, "overlays", "open", "packages", body={"specs": ["libdemo=1.0"]})
        assert NEW_PYTHON not in job["message"], job
        status, data = await api("DELETE", "overlays", "open", "packages", body={"specs": ["demopkg", "python"]})
        assert status == 202 and (await wait_job(api, data["job"]["id"]))["state"] == "succeeded"
        job = await run_job(api, "overlays", "open", "packages", body={"specs": ["demopkg"]})
        assert job["message"] == f"install demopkg: done; {NEW_PYTHON}", job
        assert await revisions_agree(client) == 5
        status, lock = await api("GET", "overlays", "open", "export", params={"format": "lock"})
        assert status == 200 and "/demopkg-" in lock and "/libdemo-1.0-" in lock, lock
    finally:
        await kernels.shutdown()
    # Stopped: read from the file on disk, which now holds everything.
    _, data = await api("GET", "overlays", "open", "history")
    assert len(data["revisions"]) == 5


# --- the wrappers' explicit-file modes (scripts/mm/mm.py, run here on the host's py-rattler) -----


def test_mm_explicit_file_modes(conda_channel, tmp_path):
    """No container: among the fast tests (the channel is built once and cached)."""
    mm = Path(__file__).resolve().parent.parent / "scripts" / "mm" / "mm.py"
    env = {**os.environ, "CNT_CONDA_PREFIX": str(tmp_path / "env"), **conda_channel.env}

    def run(*args, check=True):
        result = subprocess.run([sys.executable, str(mm), *args], capture_output=True, text=True, env=env)
        assert (result.returncode == 0) == check, result.stdout + result.stderr
        return result

    def installed():
        out = run("list", "--json").stdout
        return {p["name"]: p["version"] for p in json.loads(out)}

    run("create", "-y", "-q", "demo-tool")
    lock = tmp_path / "lock.txt"
    lock.write_text(run("list", "--explicit", "--md5").stdout)  # demo-tool, libdemo 2.0
    run("install", "-y", "-q", "zlib", "libdemo=1.0")
    # -f LOCK (micromamba's explicit install): those packages, the others stay.
    run("install", "-y", "-q", "-f", str(lock))
    assert installed() == {"demo-tool": "1.0", "libdemo": "2.0", "zlib": "1.3.1"}
    # --explicit LOCK: exactly those packages, one transaction, requested specs as given.
    run("install", "-y", "-q", "--explicit", str(lock), "--requested", "demo-tool")
    assert installed() == {"demo-tool": "1.0", "libdemo": "2.0"}
    last = (tmp_path / "env" / "conda-meta" / "history").read_text().split("==> ")[-1]
    assert "-" in last and "zlib-1.3.1" in last and '# update specs: ["demo-tool"]' in last
    assert '# remove specs: ["libdemo", "zlib"]' in last
    # Unchanged: no new history entry.
    entries = (tmp_path / "env" / "conda-meta" / "history").read_text().count("==> ")
    run("install", "-y", "-q", "--explicit", str(lock), "--requested", "demo-tool")
    assert (tmp_path / "env" / "conda-meta" / "history").read_text().count("==> ") == entries
    # Bad input: a wrong hash, SPECs with a lock, --requested naming a package the lock lacks.
    bad = tmp_path / "bad.txt"
    bad.write_text(re.sub(r"#[0-9a-f]{4}", "#0000", lock.read_text(), count=1))
    assert "hash mismatch" in run("install", "-y", "--explicit", str(bad), check=False).stderr
    assert "no SPEC" in run("install", "-y", "-f", str(lock), "zlib", check=False).stderr
    assert "does not list" in run("install", "-y", "--explicit", str(lock), "--requested", "zlib", check=False).stderr
    assert installed() == {"demo-tool": "1.0", "libdemo": "2.0"}
