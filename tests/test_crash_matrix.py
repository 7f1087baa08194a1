"""Every env operation, stopped at every one of its steps: by a job cancel and by a server SIGKILL.

For each cell of operations × steps (``kernel_provider.envs.checkpoints.STEPS``) × {cancel, kill}, a
real ``jupyter server`` runs the operation through the REST API until it reaches that step and
pauses there (``JCT_PAUSE_AT``); then the job is cancelled or the server is SIGKILLed, and a new
server is started. Afterwards the env must be either byte-identical (sha256) to before or exactly
the finished result — never a third state — with no hidden file in the image directory, no
process, mount or lock left, and a final message (the job's, or the recovery's after a kill)
that says which of the two happened. The matrix is printed at the end of the run.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import urllib.error
from pathlib import Path

import pytest
from conftest import (
    QuietReport,
    Server,
    free_port,
    poll,
    processes_mentioning,
    sparse_copy,
    wait_until,
)

from kernel_provider.envs.checkpoints import STEPS
from kernel_provider.envs.disk import read_usage
from kernel_provider.envs.envmeta import read_env_meta
from kernel_provider.envs.operations import EnvOperations, read_conda_meta
from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.host.instances import InstanceManager
from kernel_provider.model.overlays import Overlay

pytestmark = pytest.mark.integration

MATRIX: list[tuple[str, str, str, str]] = []  # (operation, step, mode, outcome), printed by conftest

# What each operation asks for, and how its finished result looks.
REQUESTS = {
    "create": ("POST", "/condatainer/api/overlays", {"name": "fresh", "size_mb": 128, "packages": ["zlib"]}),
    "install": (
        "POST",
        "/condatainer/api/overlays/env/packages",
        {"specs": ["demo-tool"], "channels": ["conda-forge"]},
    ),
    "remove": ("DELETE", "/condatainer/api/overlays/env/packages", {"specs": ["libdemo"]}),
    "update": ("PATCH", "/condatainer/api/overlays/env/packages", {"specs": ["libdemo"], "channels": ["conda-forge"]}),
    "rollback": ("POST", "/condatainer/api/overlays/env/rollback", {"revision": 0}),
    "freeze": ("POST", "/condatainer/api/overlays/env/freeze", {"name": "frozen", "version": "1.0"}),
    "delete": ("DELETE", "/condatainer/api/overlays/env", None),
    "resize": ("POST", "/condatainer/api/overlays/env/resize", {"size_mb": 512}),
}
# JCT_CRASH_OPERATIONS=create,install runs those rows only (the non-root pass of scripts/test.sh).
OPERATIONS = [op for op in os.environ.get("JCT_CRASH_OPERATIONS", ",".join(STEPS)).split(",") if op]
CASES = [
    (operation, step, mode)
    for operation in OPERATIONS
    for step in STEPS[operation]
    for mode in ("cancel", "kill")
    if not (operation == "delete" and mode == "cancel")  # a DELETE is one request, not a job
]


@pytest.fixture(scope="module")
def prepared_env(tmp_path_factory, built_images, conda_channel):
    """``env.img`` with two revisions: zlib (0), then libdemo 1.0 (1) — built once."""
    images = tmp_path_factory.mktemp("prepared")
    for name in ("ubuntu24--base_image.sif", "python--3.11.sqf"):
        os.symlink(built_images / name, images / name)
    sparse_copy(built_images / "testenv.img", images / "env.img")
    config = CondaTainerConfig(
        image_dirs=[str(images)], state_dir=str(images / ".state"), container_env=conda_channel.env
    )
    operations = EnvOperations(config, InstanceManager(config))
    for spec in ("zlib", "libdemo=1.0"):
        asyncio.run(operations.change(QuietReport(), "env", "install", [spec], ["conda-forge"]))
    shutil.rmtree(images / ".state")
    return images / "env.img"


@pytest.fixture
def layout(user_layout, prepared_env, channel_env):
    (user_layout / "images" / "env.img").unlink()
    sparse_copy(prepared_env, user_layout / "images" / "env.img")
    (user_layout / "pause").mkdir()
    return user_layout


@pytest.mark.parametrize(("operation", "step", "mode"), CASES, ids=["-".join(c) for c in CASES])
def test_stopped_at_every_step_leaves_before_or_finished(layout, monkeypatch, operation, step, mode):
    images, pause = layout / "images", layout / "pause"
    before = snapshot(images)
    server = Server(layout, free_port())
    monkeypatch.setenv("JCT_PAUSE_AT", f"{operation}.{step}")
    monkeypatch.setenv("JCT_PAUSE_DIR", str(pause))
    try:
        server.start()
        method, path, body = REQUESTS[operation]
        job = submit(server, method, path, body)
        reached = pause / f"{operation}.{step}"
        wait_until(
            lambda: reached.exists() or (job and finished(server, job["id"])),
            120,
            f"{operation} to reach {step}",
            interval=0.1,
        )
        assert reached.exists(), f"the {operation} ended before {step}: {finished(server, job['id'])}"
        if mode == "cancel":
            message = cancel(server, job, pause / f"{operation}.{step}.resume")
        else:
            server.kill()
            message = None
        monkeypatch.delenv("JCT_PAUSE_AT")
        server.stop()
        server.start()  # the restart: recovery runs here
        if mode == "kill":
            message = poll(lambda: recovery_message(server), 30, interval=0.1)
        after = snapshot(images)
        outcome = judge(operation, before, after, images)
        MATRIX.append((operation, step, mode, outcome))
        expect_message(operation, outcome, message)
    finally:
        server.stop()
    assert leftovers(layout) == {"hidden": [], "processes": [], "mounts": [], "locks": []}


def submit(server: Server, method: str, path: str, body) -> dict | None:
    """Start the operation; a job's JSON, or None for the DELETE (which pauses in its request)."""
    if method == "DELETE" and body is None:
        server.request_in_background(method, path)
        return None
    return server.request(method, path, body)["job"]


def cancel(server: Server, job: dict, resume: Path) -> str:
    """Cancel the job; past its point of no return the cancel is refused and it finishes."""
    try:
        server.request("DELETE", f"/condatainer/api/jobs/{job['id']}")
    except urllib.error.HTTPError as refused:
        assert refused.code == 409, refused
        resume.write_text("")
    final = wait_until(lambda: finished(server, job["id"]), 120, "the job to end", interval=0.1)
    return final["message"] if final["state"] != "failed" else final["error"]


def finished(server: Server, job_id: str) -> dict | None:
    job = server.request("GET", f"/condatainer/api/jobs/{job_id}")
    return job if job["state"] in ("succeeded", "failed", "cancelled") else None


def recovery_message(server: Server) -> str:
    jobs = server.request("GET", "/condatainer/api/jobs")["jobs"]
    return " / ".join(j["message"] for j in jobs if j["kind"] == "recover")


def snapshot(images: Path) -> dict[str, str]:
    """sha256 of every image and sidecar in the directory (hidden work files included)."""
    found = {}
    for path in sorted(images.iterdir()):
        if path.is_file() and not path.is_symlink() and path.suffix in (".img", ".sqf", ".env"):
            found[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def packages(image: Path) -> dict[str, str]:
    return {p.name: p.version for p in read_conda_meta(read_env_meta(Overlay.from_path(str(image))))}


def judge(operation: str, before: dict, after: dict, images: Path) -> str:
    """'before' or 'finished'; fails on any third state."""
    if after == before:
        return "before"
    changed = {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}
    env = images / "env.img"
    finished_as = {
        "create": lambda: changed == {"fresh.img"} and "zlib" in packages(images / "fresh.img"),
        "install": lambda: changed == {"env.img"} and "demo-tool" in packages(env),
        "remove": lambda: changed == {"env.img"} and "libdemo" not in packages(env) and "zlib" in packages(env),
        "update": lambda: changed == {"env.img"} and packages(env).get("libdemo") == "2.0",
        "rollback": lambda: changed == {"env.img"} and "libdemo" not in packages(env) and "zlib" in packages(env),
        "freeze": lambda: (
            changed == {"frozen--1.0.sqf", "frozen--1.0.sqf.env"} and squashfs_holds_env(images / "frozen--1.0.sqf")
        ),
        "delete": lambda: changed == {"env.img"} and "env.img" not in after,
        "resize": lambda: (
            changed == {"env.img"} and read_usage(str(env)).total == 512 * 2**20 and "libdemo" in packages(env)
        ),
    }[operation]
    assert finished_as(), f"{operation}: a third state: changed {sorted(changed)}"
    return "finished"


def squashfs_holds_env(image: Path) -> bool:
    unsquashfs = shutil.which("unsquashfs") or "/usr/bin/unsquashfs"
    listing = subprocess.run([unsquashfs, "-l", str(image)], capture_output=True, text=True, check=True).stdout
    return "cnt/frozen/1.0/conda-meta/history" in listing


def expect_message(operation: str, outcome: str, message: str | None) -> None:
    """The final word (the job's, or the recovery's after a kill) says which of the two happened."""
    if operation == "delete" and message is None:
        return  # never reached: a DELETE is only killed, and the recovery reports it
    assert message, f"no final message for a {operation} that ended {outcome}"
    said_before = "as it was before" in message or "nothing was created" in message
    assert said_before == (outcome == "before"), (outcome, message)


def leftovers(layout: Path) -> dict:
    images = layout / "images"
    # The env and what the operations made (base images are links shared with other tests).
    inodes = {f":{p.stat().st_ino} " for p in images.iterdir() if not p.is_symlink() and p.stat().st_nlink == 1}
    lock_dir = Path(CondaTainerConfig().state_dir) / "jupyter-condatainer" / "locks"
    return {
        "hidden": sorted(p.name for p in images.glob(".*")),
        "processes": processes_mentioning(str(images)),
        "mounts": [line for line in Path("/proc/mounts").read_text().splitlines() if str(layout) in line],
        "locks": [line for line in Path("/proc/locks").read_text().splitlines() if any(i in line for i in inodes)]
        + sorted(p.name for p in lock_dir.glob("*.lock")),
    }


def test_disk_full_during_an_install_leaves_the_env_as_before(layout, tmp_path, monkeypatch):
    """A real ENOSPC: the disk fills up while the install runs (paused at its run step, then filled)."""
    if os.getuid() != 0:
        pytest.fail("this test mounts a small tmpfs and must run as root (the non-root run excludes it)")
    env = layout / "images" / "env.img"
    small = tmp_path / "small"
    small.mkdir()
    size_kb = (2 * env.stat().st_blocks * 512) // 1024 + 4096
    pause = layout / "pause"
    monkeypatch.setenv("JCT_PAUSE_AT", "install.run")
    monkeypatch.setenv("JCT_PAUSE_DIR", str(pause))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(small)], check=True)
    try:
        sparse_copy(env, small / "full.img")
        before = snapshot(small)
        config = CondaTainerConfig(image_dirs=[str(small), str(layout / "images")], min_free_mb=0)
        operations = EnvOperations(config, InstanceManager(config))

        async def install_on_a_full_disk():
            task = asyncio.ensure_future(
                operations.change(QuietReport(), "full", "install", ["demo-tool"], ["conda-forge"])
            )
            while not (pause / "install.run").exists():
                await asyncio.sleep(0.05)
            fill(small / "filler")
            (pause / "install.run.resume").write_text("")
            return await task

        with pytest.raises((RuntimeError, OSError)) as error:
            asyncio.run(install_on_a_full_disk())
        (small / "filler").unlink()
        assert snapshot(small) == before, "the env must be byte-identical after a disk-full install"
        assert sorted(p.name for p in small.iterdir()) == ["full.img"], "no work file may be left"
        assert "failed" in str(error.value).splitlines()[0], error.value
    finally:
        subprocess.run(["umount", str(small)], check=True)


def fill(path: Path) -> None:
    """Write until the filesystem is full."""
    with open(path, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass


def test_a_symlinked_env_changes_its_target_and_keeps_the_link(layout, tmp_path):
    images = layout / "images"
    real = images / "real.img"
    os.rename(images / "env.img", real)
    os.symlink(real, images / "linked.img")
    outside = tmp_path / "outside.img"
    sparse_copy(real, outside)
    os.symlink(outside, images / "escape.img")
    config = CondaTainerConfig()
    operations = EnvOperations(config, InstanceManager(config))

    asyncio.run(operations.change(QuietReport(), "linked", "install", ["demo-tool"], ["conda-forge"]))
    assert (images / "linked.img").is_symlink() and os.readlink(images / "linked.img") == str(real)
    assert "demo-tool" in packages(real)

    before = hashlib.sha256(outside.read_bytes()).hexdigest()
    with pytest.raises(Exception) as refused:
        asyncio.run(operations.change(QuietReport(), "escape", "install", ["demo-tool"], ["conda-forge"]))
    assert "not an image file in an image directory" in str(refused.value).splitlines()[0]
    assert hashlib.sha256(outside.read_bytes()).hexdigest() == before and (images / "escape.img").is_symlink()
    assert not list(images.glob(".*")) and not list(tmp_path.glob(".outside*"))
