"""Faults, for real: killed servers and kernels, foreign locks, full disks, many cycles."""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import processes_mentioning, running_instances
from jupyter_client import BlockingKernelClient
from jupyter_client.manager import AsyncKernelManager
from test_provisioner import KERNEL, Server, free_port

from kernel_provider.envs.operations import DiskSpaceError, EnvOperations
from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.host.instances import InstanceManager
from kernel_provider.host.probes import ImageProbe
from kernel_provider.host.state import StateStore
from kernel_provider.incontainer.constants import LAUNCHER
from kernel_provider.kernel.kernelspecs import KernelspecStore
from kernel_provider.model.overlays import scan
from kernel_provider.model.plan import StackRequest, plan_container

pytestmark = pytest.mark.integration


@pytest.fixture
def specs(user_layout):
    config = CondaTainerConfig()
    KernelspecStore().sync(scan(config.image_dirs, config.distro))
    return user_layout


def wait_for(predicate, timeout: float = 60, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {predicate}")


def locks_held_by_this_process() -> list[str]:
    """/proc/locks lines of this test process (images are hard links others may lock too)."""
    return [line for line in Path("/proc/locks").read_text().splitlines() if f" {os.getpid()} " in line]


def our_leftovers(layout: Path) -> dict:
    """Everything of ours that must be gone once nothing runs."""
    store = StateStore(CondaTainerConfig().instance_state_dir)
    return {
        "instances": sorted(n for n in running_instances() if n.startswith(InstanceManager(CondaTainerConfig()).name_prefix)),
        "state": [r.name for r in store.ours()],
        "locks": locks_held_by_this_process(),
        "mounts": [line for line in Path("/proc/mounts").read_text().splitlines() if str(layout) in line],
        "hidden": sorted(p.name for p in (layout / "images").glob(".*")),
    }


def clean(layout: Path) -> dict:
    return {"instances": [], "state": [], "locks": [], "mounts": [], "hidden": []}



def test_server_killed_during_a_running_cell_and_during_instance_start(specs):
    server = Server(specs, free_port())
    try:
        server.start()
        kernel = server.request("POST", "/api/kernels", {"name": KERNEL})
        # A cell is running when the server dies (the kernel keeps computing in its instance).
        client = connect(specs, kernel["id"])
        client.execute("import time; time.sleep(600)")
        wait_for(lambda: client.get_iopub_msg(timeout=10)["content"].get("execution_state") == "busy")
        client.stop_channels()
        # Another kernel's instance is still starting when the server dies.
        starting = threading.Thread(target=lambda: _ignore_errors(server.request, "POST", "/api/kernels", {"name": KERNEL}))
        starting.start()
        wait_for(lambda: len(StateStore(CondaTainerConfig().instance_state_dir).ours()) >= 2, timeout=30, interval=0.02)
        server.kill()
        starting.join(timeout=60)
        assert our_leftovers(specs)["instances"], "the killed server left its instances running"

        server.start()
        wait_for(lambda: our_leftovers(specs) == clean(specs), timeout=60)
    finally:
        server.stop()


def connect(layout: Path, kernel_id: str) -> BlockingKernelClient:
    """A client of a server's kernel, straight from its connection file, once it answers."""
    client = BlockingKernelClient(connection_file=str(layout / "runtime" / f"kernel-{kernel_id}.json"))
    client.load_connection_file()
    client.start_channels()
    client.kernel_info()
    client.get_shell_msg(timeout=60)
    return client


def _ignore_errors(function, *args):
    try:
        function(*args)
    except OSError:
        pass  # the server was killed under the request, as intended


def test_kernel_killed_inside_the_instance_is_restarted_in_the_same_instance(specs):
    server = Server(specs, free_port())
    try:
        server.start()
        kernel = server.request("POST", "/api/kernels", {"name": KERNEL})
        records = StateStore(CondaTainerConfig().instance_state_dir).ours()
        assert len(records) == 1
        instance = records[0].name
        victims = wait_for(lambda: [line.split(":")[0] for line in processes_mentioning(LAUNCHER)
                                    if kernel["id"] in line])
        os.kill(int(victims[0]), signal.SIGKILL)
        # jupyter_server's restarter notices and starts the kernel again, in the same instance.
        wait_for(lambda: [line for line in processes_mentioning(LAUNCHER)
                          if kernel["id"] in line and line.split(":")[0] != victims[0]], timeout=60)
        # (jupyter_server reports "starting" after an auto-restart until a client talks to it.)
        client = connect(specs, kernel["id"])
        try:
            reply = client.execute_interactive("import sys; print(sys.executable)", timeout=30)
            assert reply["content"]["status"] == "ok"
        finally:
            client.stop_channels()
        assert [r.name for r in StateStore(CondaTainerConfig().instance_state_dir).ours()] == [instance]
        assert instance in running_instances()
        server.request("DELETE", f"/api/kernels/{kernel['id']}")
        wait_for(lambda: our_leftovers(specs) == clean(specs), timeout=60)
    finally:
        server.stop()


def test_condatainer_cli_holding_an_image_exclusively_fails_the_start_clearly(specs):
    """CondaTainer's remove/rebuild holds LOCK_EX: our start must not mount the image."""
    image = specs / "images" / "python--3.11.sqf"
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
    assert our_leftovers(specs) == clean(specs)


def test_removal_of_an_image_used_by_our_kernel_is_refused(specs):
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
    assert (specs / "images" / "python--3.11.sqf").exists()


def test_an_env_too_big_for_the_free_space_is_refused_before_anything_is_written(specs, tmp_path):
    if os.getuid() != 0:
        pytest.fail("this test mounts a small tmpfs and must run as root (the non-root run excludes it)")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small)], check=True)
    try:
        config = CondaTainerConfig(image_dirs=[str(small), str(specs / "images")])
        operations = EnvOperations(config, InstanceManager(config))
        with pytest.raises(DiskSpaceError) as error:
            asyncio.run(operations.create(Report(), "bigenv", size_mb=64))
        assert str(error.value).startswith("not enough free space for a 64 MB env: it needs 64 MB")
        assert list(small.iterdir()) == [], "nothing may be written"
        # Beyond the configured maximum: refused whatever the free space.
        with pytest.raises(ValueError, match="between 64 and 1000"):
            asyncio.run(EnvOperations(CondaTainerConfig(max_env_size_mb=1000)).create(Report(), "huge", size_mb=1001))
    finally:
        subprocess.run(["umount", str(small)], check=True)


class Report:
    """A reporter that keeps the log (what the CLI and the jobs implement)."""

    def __init__(self):
        self.lines: list[str] = []

    def log(self, line):
        self.lines.append(line)

    def step(self, progress, message):
        pass

    def point_of_no_return(self):
        pass


def test_fifty_instance_cycles_leave_nothing_behind(specs):
    config = CondaTainerConfig()
    plan = plan_container(
        StackRequest(overlays=["python/3.11", "hello/1.0"]),
        scan(config.image_dirs, config.distro),
        ImageProbe(),
        environ=os.environ,
        cwd=os.getcwd(),
        uid=os.getuid(),
    )
    manager = InstanceManager(config)

    async def cycles():
        for index in range(50):
            instance = await manager.acquire(plan, f"k{index}", share=False)
            await manager.release(instance, f"k{index}")

    asyncio.run(cycles())
    assert our_leftovers(specs) == clean(specs)
    assert processes_mentioning(str(specs / "images")) == []


def test_server_killed_during_env_create_and_install(specs, conda_channel, monkeypatch):
    """After a SIGKILL mid-create or mid-install and a restart: no temporary image is left and
    every .img is either as it was before or complete — never half-written."""
    for key, value in conda_channel.env.items():
        monkeypatch.setenv(key, value)  # the server passes the site channel alias into containers
    images = specs / "images"
    server = Server(specs, free_port())

    def job_reaches(job_id: str, progress: float) -> dict:
        return wait_for(lambda: (lambda job: job if job["progress"] >= progress or job["state"] != "running" else None)(
            server.request("GET", f"/condatainer/api/jobs/{job_id}")), timeout=120, interval=0.02)

    def packages(name: str) -> set[str]:
        listing = server.request("GET", f"/condatainer/api/overlays/{name}/packages")["packages"]
        return {f"{p['name']}={p['version']}" for p in listing}

    try:
        server.start()
        job = server.request("POST", "/condatainer/api/overlays", {"name": "kept", "size_mb": 128, "packages": ["zlib"]})
        assert wait_for(lambda: server.request("GET", f"/condatainer/api/jobs/{job['job']['id']}")["state"]
                        in ("succeeded", "failed"), timeout=120)
        before = packages("kept")
        assert before and not list(images.glob(".*"))

        # Killed while mm-create fills the temporary image.
        job = server.request("POST", "/condatainer/api/overlays", {"name": "halfway", "size_mb": 256, "packages": ["demo-tool"]})
        assert job_reaches(job["job"]["id"], 0.15)["state"] == "running"
        server.kill()
        assert list(images.glob(".halfway.*.tmp.img")), "the create was cut off midway"
        server.start()
        wait_for(lambda: not list(images.glob(".*")), timeout=60)
        assert not (images / "halfway.img").exists()

        # Killed while mm-install changes the env (a snapshot of it exists).
        job = server.request("POST", "/condatainer/api/overlays/kept/packages", {"specs": ["demo-tool"]})
        job_reaches(job["job"]["id"], 0.2)
        server.kill()
        server.start()
        wait_for(lambda: not list(images.glob(".*")), timeout=60)
        after = packages("kept")
        assert after == before or after >= before | {"demo-tool=1.0"}, (before, after)
        assert our_leftovers(specs)["state"] == []
    finally:
        server.stop()
