"""Faults, for real: killed servers and kernels, foreign locks, full disks, many cycles."""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import (
    KERNEL,
    QuietReport,
    Server,
    acquired,
    connect,
    free_port,
    make_plan,
    processes_mentioning,
    running_instances,
    wait_until,
)
from jupyter_client.manager import AsyncKernelManager

from kernel_provider.envs.operations import DiskSpaceError, EnvOperations
from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.host.instances import InstanceManager
from kernel_provider.host.runtime import runtime_dir
from kernel_provider.host.state import StateStore
from kernel_provider.host.zygote import ZYGOTE_SCRIPT, Zygote
from kernel_provider.incontainer.constants import LAUNCHER
from kernel_provider.kernel.kernelspecs import KernelspecStore, custom_spec

pytestmark = pytest.mark.integration


def locks_held_by_this_process() -> list[str]:
    """/proc/locks lines of this test process (images are hard links others may lock too)."""
    return [line for line in Path("/proc/locks").read_text().splitlines() if f" {os.getpid()} " in line]


def our_leftovers(layout: Path) -> dict:
    """Everything of ours that must be gone once nothing runs."""
    store = StateStore(CondaTainerConfig().instance_state_dir)
    return {
        "instances": sorted(
            n for n in running_instances() if n.startswith(InstanceManager(CondaTainerConfig()).name_prefix)
        ),
        "state": [r.name for r in store.ours()],
        "locks": locks_held_by_this_process(),
        "mounts": [line for line in Path("/proc/mounts").read_text().splitlines() if str(layout) in line],
        "hidden": sorted(p.name for p in (layout / "images").glob(".*")),
    }


def kernel_processes(kernel_id: str, instance: str) -> list[str]:
    """Host PIDs of the server's kernel: started by exec, its command line names its connection
    file; forked (the only kernel of ``instance``), it is the child of that instance's fork server
    and has its command line, which names the server's socket (another test's instance, still
    stopping, has its own fork server and kernels)."""
    execd = [line.split(":")[0] for line in processes_mentioning(LAUNCHER) if kernel_id in line]
    socket_path = str(Zygote.files(runtime_dir(), instance)[0])
    forked = {line.split(":")[0] for line in processes_mentioning(ZYGOTE_SCRIPT) if socket_path in line}
    return execd + [pid for pid in forked if parent_of(pid) in forked]


def parent_of(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
    except (OSError, IndexError):
        return ""


def clean(layout: Path) -> dict:
    return {"instances": [], "state": [], "locks": [], "mounts": [], "hidden": []}


def test_server_killed_during_a_running_cell_and_during_instance_start(kernel_env):
    server = Server(kernel_env, free_port())
    try:
        server.start()
        kernel = server.request("POST", "/api/kernels", {"name": KERNEL})
        # A cell is running when the server dies (the kernel keeps computing in its instance).
        client = connect(kernel_env, kernel["id"])
        client.execute("import time; time.sleep(600)")
        wait_until(
            lambda: client.get_iopub_msg(timeout=10)["content"].get("execution_state") == "busy", 60, "the cell to run"
        )
        client.stop_channels()
        # Another kernel's instance (another stack: the first one's is shared) is still starting when the server dies.
        KernelspecStore().write(custom_spec(["hello/1.0", "python/3.11"], label="other"))
        starting = server.request_in_background("POST", "/api/kernels", {"name": "condatainer-other"})
        wait_until(
            lambda: len(StateStore(CondaTainerConfig().instance_state_dir).ours()) >= 2,
            30,
            "the second instance to be starting",
            interval=0.02,
        )
        server.kill()
        starting.join(timeout=60)
        assert our_leftovers(kernel_env)["instances"], "the killed server left its instances running"

        server.start()
        wait_until(lambda: our_leftovers(kernel_env) == clean(kernel_env), 60, "nothing of ours to be left")
    finally:
        server.stop()


def test_kernel_killed_inside_the_instance_is_restarted_in_the_same_instance(kernel_env):
    server = Server(kernel_env, free_port())
    try:
        server.start()
        kernel = server.request("POST", "/api/kernels", {"name": KERNEL})
        records = StateStore(CondaTainerConfig().instance_state_dir).ours()
        assert len(records) == 1
        instance = records[0].name
        victims = wait_until(lambda: kernel_processes(kernel["id"], instance), 60, "the kernel's process")
        os.kill(int(victims[0]), signal.SIGKILL)
        # jupyter_server's restarter notices and starts the kernel again, in the same instance.
        wait_until(lambda: set(kernel_processes(kernel["id"], instance)) - set(victims), 60, "the restarted kernel")
        # (jupyter_server reports "starting" after an auto-restart until a client talks to it.)
        client = connect(kernel_env, kernel["id"])
        try:
            reply = client.execute_interactive("import sys; print(sys.executable)", timeout=30)
            assert reply["content"]["status"] == "ok"
        finally:
            client.stop_channels()
        assert [r.name for r in StateStore(CondaTainerConfig().instance_state_dir).ours()] == [instance]
        assert instance in running_instances()
        server.request("DELETE", f"/api/kernels/{kernel['id']}")
        # kept warm for the next kernel of the stack, until the server exits
        assert [r.warm for r in StateStore(CondaTainerConfig().instance_state_dir).ours()] == [True]
        server.stop()
        wait_until(lambda: our_leftovers(kernel_env) == clean(kernel_env), 60, "nothing of ours to be left")
    finally:
        server.stop()


def test_condatainer_cli_holding_an_image_exclusively_fails_the_start_clearly(kernel_env):
    """CondaTainer's remove/rebuild holds LOCK_EX: our start must not mount the image."""
    image = kernel_env / "images" / "python--3.11.sqf"
    # (The CLI opens the file read-write; a flock is the same lock on a read-only descriptor,
    # which an ordinary user can also take on a shared image it may not write.)
    with open(image, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)

        async def start():
            km = AsyncKernelManager(kernel_name=KERNEL)
            with pytest.raises(Exception) as error:
                await km.start_kernel()
            return str(error.value)

        message = asyncio.run(start())
    assert "python--3.11.sqf is in use" in message
    assert our_leftovers(kernel_env) == clean(kernel_env)


def test_removal_of_an_image_used_by_our_kernel_is_refused(kernel_env):
    async def scenario():
        km = AsyncKernelManager(kernel_name=KERNEL)
        await km.start_kernel()
        try:
            operations = EnvOperations(CondaTainerConfig(), InstanceManager.for_config(CondaTainerConfig()))
            with pytest.raises(Exception) as error:
                await operations.delete("python/3.11")
            return str(error.value)
        finally:
            await km.shutdown_kernel()

    assert "in use" in asyncio.run(scenario())
    assert (kernel_env / "images" / "python--3.11.sqf").exists()


def test_an_env_too_big_for_the_free_space_is_refused_before_anything_is_written(kernel_env, tmp_path):
    if os.getuid() != 0:
        pytest.fail("this test mounts a small tmpfs and must run as root (the non-root run excludes it)")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small)], check=True)
    try:
        config = CondaTainerConfig(image_dirs=[str(small), str(kernel_env / "images")])
        operations = EnvOperations(config, InstanceManager(config))
        with pytest.raises(DiskSpaceError) as error:
            asyncio.run(operations.create(QuietReport(), "bigenv", size_mb=64))
        assert str(error.value).startswith("not enough free space for a 64 MB env: it needs 64 MB")
        assert list(small.iterdir()) == [], "nothing may be written"
        # Beyond the configured maximum: refused whatever the free space.
        with pytest.raises(ValueError, match="between 64 and 1000"):
            asyncio.run(
                EnvOperations(CondaTainerConfig(max_env_size_mb=1000)).create(QuietReport(), "huge", size_mb=1001)
            )
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_twenty_instance_cycles_leave_nothing_behind(kernel_env):
    plan = make_plan("python/3.11", "hello/1.0")
    manager = InstanceManager(CondaTainerConfig())

    async def cycles():
        for index in range(20):
            async with acquired(manager, plan, f"k{index}"):
                pass

    asyncio.run(cycles())
    assert our_leftovers(kernel_env) == clean(kernel_env)
    assert processes_mentioning(str(kernel_env / "images")) == []


def test_server_killed_during_env_create_and_install(kernel_env, channel_env):
    """After a SIGKILL mid-create or mid-install and a restart: no temporary image is left and
    every .img is either as it was before or complete — never half-written."""
    images = kernel_env / "images"
    server = Server(kernel_env, free_port())

    def job_reaches(job_id: str, progress: float) -> dict:
        return wait_until(
            lambda: (lambda job: job if job["progress"] >= progress or job["state"] != "running" else None)(
                server.request("GET", f"/condatainer/api/jobs/{job_id}")
            ),
            120,
            f"job {job_id} to reach {progress}",
            interval=0.02,
        )

    def packages(name: str) -> set[str]:
        listing = server.request("GET", f"/condatainer/api/overlays/{name}/packages")["packages"]
        return {f"{p['name']}={p['version']}" for p in listing}

    try:
        server.start()
        job = server.request(
            "POST", "/condatainer/api/overlays", {"name": "kept", "size_mb": 128, "packages": ["zlib"]}
        )
        wait_until(
            lambda: (
                server.request("GET", f"/condatainer/api/jobs/{job['job']['id']}")["state"] in ("succeeded", "failed")
            ),
            120,
            "the create to end",
        )
        before = packages("kept")
        assert before and not list(images.glob(".*"))

        # Killed while mm-create fills the temporary image.
        job = server.request(
            "POST", "/condatainer/api/overlays", {"name": "halfway", "size_mb": 256, "packages": ["demo-tool"]}
        )
        assert job_reaches(job["job"]["id"], 0.15)["state"] == "running"
        server.kill()
        assert list(images.glob(".halfway.*.tmp.img")), "the create was cut off midway"
        server.start()
        wait_until(lambda: not list(images.glob(".*")), 60, "the recovery to remove the work files")
        assert not (images / "halfway.img").exists()

        # Killed while mm-install changes the env (a snapshot of it exists).
        job = server.request("POST", "/condatainer/api/overlays/kept/packages", {"specs": ["demo-tool"]})
        job_reaches(job["job"]["id"], 0.2)
        server.kill()
        server.start()
        wait_until(lambda: not list(images.glob(".*")), 60, "the recovery to remove the work files")
        after = packages("kept")
        assert after == before or after >= before | {"demo-tool=1.0"}, (before, after)
        assert our_leftovers(kernel_env)["state"] == []
    finally:
        server.stop()
