"""The provisioner, driven for real: AsyncKernelManager and a real ``jupyter server``."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import KERNEL, Server, free_port, processes_mentioning, reply_to, running_instances
from conftest import run_cell as execute
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager

from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.host.process import apptainer_env
from kernel_provider.host.state import StateStore
from kernel_provider.kernel.kernelspecs import KernelspecStore, custom_spec
from kernel_provider.kernel.provisioner import channels_listening
from kernel_provider.kernel.provisioner_base import KernelStartError

pytestmark = pytest.mark.integration


def instance_of(km: AsyncKernelManager) -> str:
    return km.provisioner.instance.name


def test_kernelspec_is_listed(kernel_env):
    specs = KernelSpecManager().get_all_specs()
    assert KERNEL in specs
    spec = specs[KERNEL]["spec"]
    assert spec["display_name"] == "CondaTainer: python/3.11"
    assert spec["interrupt_mode"] == "message"
    assert spec["metadata"]["kernel_provisioner"]["provisioner_name"] == "condatainer-provisioner"
    out = subprocess.run([sys.executable, "-m", "jupyter_client.kernelspecapp", "list"], capture_output=True, text=True)
    assert KERNEL in out.stdout


def test_kernel_lifecycle(container_runtime, kernel_env):
    """Execute, interrupt a sleep, restart in the same instance, shut down leaving nothing."""

    async def scenario():
        km = AsyncKernelManager(kernel_name=KERNEL)
        await km.start_kernel(cwd=str(kernel_env))
        client = km.client()
        client.start_channels()
        try:
            await client.wait_for_ready(timeout=60)
            out, _ = await execute(
                client, "import os, sys; print(sys.executable, os.environ['IN_CONDATAINER'], os.getcwd())"
            )
            assert out.split() == ["/cnt/python/3.11/bin/python", "1", str(kernel_env)]
            name = instance_of(km)

            msg_id = client.execute("import time; time.sleep(60)")
            await asyncio.sleep(1.0)
            started = time.monotonic()
            await km.interrupt_kernel()
            reply = await reply_to(client, msg_id, timeout=10)
            assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
            assert time.monotonic() - started < 1.0
            assert await km.is_alive()

            await km.restart_kernel()
            await client.wait_for_ready(timeout=60)
            assert instance_of(km) == name, "restart must reuse the instance"
            out, _ = await execute(client, "print(40 + 2)")
            assert out.strip() == "42"
            # The default transport: ipc sockets in the user-only runtime directory.
            assert json.loads(Path(km.connection_file).read_text())["transport"] == "ipc"
            assert Path(km.ip).parent.stat().st_mode & 0o077 == 0
        finally:
            client.stop_channels()
            await km.shutdown_kernel(now=False)
        return name

    name = asyncio.run(scenario())
    assert name not in running_instances()
    assert not StateStore(CondaTainerConfig().instance_state_dir).path(name).exists()
    assert processes_mentioning(name) == []
    assert list((kernel_env / "runtime" / "condatainer").glob("*.env")) == []


def test_tcp_transport_option(kernel_env):
    spec = custom_spec(["python/3.11"], label="tcp")
    spec = type(spec)(**{**spec.__dict__, "extra_config": {"transport": "tcp"}})
    KernelspecStore().write(spec)

    async def scenario():
        km = AsyncKernelManager(kernel_name=spec.name)
        await km.start_kernel()
        client = km.client()
        client.start_channels()
        try:
            listening = channels_listening(km.get_connection_info())  # its ports, in /proc/net/tcp
            await client.wait_for_ready(timeout=60)
            out, _ = await execute(client, "print('tcp ok')")
            return km.transport, listening, out.strip()
        finally:
            client.stop_channels()
            await km.shutdown_kernel()

    assert asyncio.run(scenario()) == ("tcp", True, "tcp ok")


def test_python_without_ipykernel_gets_one_supplied(kernel_env):
    """An overlay whose python has no ipykernel (a bare venv) still starts a kernel."""
    stage = kernel_env / "stage" / "cnt" / "barepython" / "3.11" / "bin"
    stage.mkdir(parents=True)
    (stage / "python").symlink_to("/usr/bin/python3")
    subprocess.run(
        [
            "mksquashfs",
            str(kernel_env / "stage"),
            str(kernel_env / "images" / "barepython--3.11.sqf"),
            "-all-root",
            "-noappend",
            "-quiet",
        ],
        check=True,
    )
    KernelspecStore().write(custom_spec(["barepython/3.11"], label="bare"))

    async def scenario():
        km = AsyncKernelManager(kernel_name="condatainer-bare")
        await km.start_kernel()
        client = km.client()
        client.start_channels()
        try:
            await client.wait_for_ready(timeout=120)
            out, _ = await execute(client, "import ipykernel, sys; print(sys.executable, ipykernel.__file__)")
            return out.split()
        finally:
            client.stop_channels()
            await km.shutdown_kernel()

    executable, ipykernel_file = asyncio.run(scenario())
    assert executable == "/cnt/barepython/3.11/bin/python"
    assert ipykernel_file.startswith("/opt/jupyter-condatainer/ipykernel/cp311/")


@pytest.mark.parametrize(
    ("overlays", "config", "reason"),
    [
        (["python/3.12"], {}, "Did you mean: python/3.11"),
        (["corrupt/1.0"], {}, "could not start: the image corrupt--1.0.sqf is damaged or not an image. Rebuild"),
        (["python/3.11"], {"apptainer_bin": "/nonexistent/apptainer"}, "Apptainer not found"),
    ],
    ids=["unknown-overlay", "corrupt-sqf", "no-apptainer"],
)
def test_bad_input_fails_fast_and_leaves_nothing(kernel_env, overlays, config, reason):
    (kernel_env / "images" / "corrupt--1.0.sqf").write_bytes(b"this is not squashfs" * 100)
    before = running_instances()
    if "apptainer_bin" in config:
        os.environ["CNT_APPTAINER_BIN"] = config["apptainer_bin"]
    try:
        KernelspecStore().write(custom_spec(overlays, label="bad"))

        async def scenario():
            km = AsyncKernelManager(kernel_name="condatainer-bad")
            started = time.monotonic()
            with pytest.raises(KernelStartError) as error:
                await km.start_kernel()
            return time.monotonic() - started, str(error.value), km.connection_file

        elapsed, message, connection_file = asyncio.run(scenario())
    finally:
        os.environ.pop("CNT_APPTAINER_BIN", None)
    assert reason in message and message.startswith("The kernel 'CondaTainer: bad' could not start: ")
    assert not os.path.exists(connection_file), "the connection file (it holds the kernel's key) is removed"
    assert elapsed < 10
    assert running_instances() <= before, "no instance of its own left (a sweep may end earlier tests' orphans)"
    assert StateStore(CondaTainerConfig().instance_state_dir).ours() == []


# --- a real jupyter server -----------------------------------------------------------------


def test_server_crash_orphans_are_cleaned_on_next_start(container_runtime, kernel_env, built_images):
    server = Server(kernel_env, free_port())
    unrelated = "unrelated-by-hand"
    subprocess.run(
        [container_runtime, "instance", "start", str(kernel_env / "images" / "ubuntu24--base_image.sif"), unrelated],
        check=True,
        capture_output=True,
        env=apptainer_env(container_runtime),
    )
    try:
        server.start()
        kernels = [server.request("POST", "/api/kernels", {"name": KERNEL}) for _ in range(2)]
        assert all(k["name"] == KERNEL for k in kernels)
        records = StateStore(CondaTainerConfig().instance_state_dir).ours()
        ours = {r.name for r in records}
        assert len(ours) == 1 and ours <= running_instances(), "kernels of one stack share its instance"
        assert sorted(records[0].kernels) == sorted(k["id"] for k in kernels)

        server.kill()
        assert ours <= running_instances(), "instances outlive a SIGKILLed server"

        server.start()
        deadline = time.monotonic() + 30  # the sweep runs once the server's loop is up
        store = StateStore(CondaTainerConfig().instance_state_dir)
        while (ours & running_instances() or store.ours()) and time.monotonic() < deadline:
            time.sleep(0.5)
        running = running_instances()
        assert not ours & running, "orphans must be stopped at server start"
        assert unrelated in running, "an instance started by hand is not ours to stop"
        assert store.ours() == []
        assert server.request("GET", "/api/kernels") == []
    finally:
        server.stop()
        subprocess.run(
            [container_runtime, "instance", "stop", unrelated],
            capture_output=True,
            env=apptainer_env(container_runtime),
        )


def test_a_failed_start_says_why_leaves_nothing_and_the_server_still_stops(kernel_env):
    """``POST /api/kernels`` of a kernelspec whose overlay is corrupt or gone: the answer says why,
    nothing of the start stays (no connection file with its key), and SIGTERM stops the server
    at once (jupyter_server hangs on a failed start jupyter_client still counts as pending)."""
    images = kernel_env / "images"
    (images / "corrupt--1.0.sqf").write_bytes(b"this is not squashfs" * 100)
    shutil.copy(images / "hello--1.0.sqf", images / "gone--1.0.sqf")
    KernelspecStore().write(custom_spec(["corrupt/1.0"], label="corrupt"))
    KernelspecStore().write(custom_spec(["python/3.11", str(images / "gone--1.0.sqf")], label="gone"))
    runtime = kernel_env / "runtime"
    store = StateStore(CondaTainerConfig().instance_state_dir)
    server = Server(kernel_env, free_port())
    try:
        server.start()
        (images / "gone--1.0.sqf").unlink()  # after the server's kernelspec sync, which would drop the spec
        good = server.request("POST", "/api/kernels", {"name": KERNEL})["id"]
        answers = {
            name: server.refused("POST", "/api/kernels", {"name": f"condatainer-{name}"})
            for name in ("corrupt", "gone")
        }
        session = {"path": "x.ipynb", "name": "x.ipynb", "type": "notebook", "kernel": {"name": "condatainer-corrupt"}}
        answers["session"] = server.refused("POST", "/api/sessions", session)  # how JupyterLab starts kernels
        assert [p.name for p in runtime.glob("kernel-*.json")] == [f"kernel-{good}.json"]
        kept = {f"kernel-{good}.env", f"kernel-{good}.stack.json"}  # the good kernel's env file and stack record
        assert {p.name for p in (runtime / "condatainer").glob("kernel-*")} == kept
        assert len(store.ours()) == 1
        server.process.terminate()
        started = time.monotonic()
        server.process.wait(timeout=60)
        stopped_in = time.monotonic() - started
    finally:
        server.stop()
    for name, label, reason in [
        ("corrupt", "corrupt", "could not start: the image corrupt--1.0.sqf is damaged or not an image. Rebuild"),
        ("gone", "gone", "could not start: the image gone--1.0.sqf is missing ("),
        ("session", "corrupt", "could not start: the image corrupt--1.0.sqf is damaged or not an image. Rebuild"),
    ]:
        status, answer = answers[name]
        assert status == 500 and answer["message"].startswith(f"The kernel 'CondaTainer: {label}' could not start: ")
        assert reason in answer["message"], answer
    assert stopped_in < 10, f"the server took {stopped_in:.1f} s to stop"
    assert store.ours() == [] and list(runtime.glob("kernel-*.json")) == []
