"""Kernels forked by an instance's fork server, and warm instances: real kernels in real instances."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import KERNEL, Server, free_port, poll, processes_mentioning, reply_to, running_instances, wait_until
from conftest import run_cell as execute
from jupyter_client.manager import AsyncKernelManager

from kernel_provider.envs.operations import EnvOperations
from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.host.instances import InstanceManager, read_ahead_list
from kernel_provider.host.runtime import runtime_dir
from kernel_provider.host.state import StateStore
from kernel_provider.kernel.kernelspecs import KernelspecStore, custom_spec
from kernel_provider.kernel.provisioner import channels_listening

pytestmark = pytest.mark.integration

FACTS = (
    "import gc, json, os, random, sys; "
    "print(json.dumps({'random': random.random(), 'pid': os.getpid(), 'env': dict(os.environ), "
    "'path': sys.path, 'cwd': os.getcwd(), 'sid': os.getsid(0) == os.getpid(), 'gc': gc.isenabled()}))"
)


class Kernel:
    """A started kernel and its client."""

    def __init__(self, name: str, cwd: Path):
        self.km = AsyncKernelManager(kernel_name=name)
        self.cwd = cwd

    async def __aenter__(self) -> Kernel:
        await self.km.start_kernel(cwd=str(self.cwd))
        self.client = self.km.client()
        self.client.start_channels()
        await self.client.wait_for_ready(timeout=120)
        return self

    async def __aexit__(self, *exc) -> None:
        self.client.stop_channels()
        await self.km.shutdown_kernel(now=True)

    @property
    def forked(self) -> bool:
        return self.km.provisioner.forked

    async def facts(self) -> dict:
        out, error = await execute(self.client, FACTS)
        assert error is None, error
        return json.loads(out.splitlines()[-1])


def shared_spec(label: str = "fork", **config) -> str:
    """A kernelspec whose kernels share one instance (so one fork server) with every other
    kernelspec of python/3.11 made here."""
    spec = custom_spec(["python/3.11"], label=label, share=True, extra_config=config)
    KernelspecStore().write(spec)
    return spec.name


def test_forked_kernels(kernel_env):
    """Two forks differ in random state and PID; each is a session leader with exactly the exec
    path's environment; a fork that exits is noticed and restarts as a fork; a killed fork server
    makes the next kernel start by exec, and the one after that is a fork of a new one."""
    name, exec_name = shared_spec(), shared_spec("exec", fork_server=False)

    async def scenario():
        async with Kernel(name, kernel_env) as first, Kernel(name, kernel_env) as second:
            assert first.forked and second.forked
            instance = first.km.provisioner.instance
            assert second.km.provisioner.instance is instance
            a, b = await first.facts(), await second.facts()
            async with Kernel(exec_name, kernel_env) as execd:
                assert not execd.forked
                c = await execd.facts()

            # os._exit: noticed; the restart is a fork again
            first.client.execute("import os; os._exit(1)")
            await asyncio.wait_for(_until_dead(first.km), 30)
            await first.km.restart_kernel(now=True)
            await first.client.wait_for_ready(timeout=120)
            assert first.forked
            out, _ = await execute(first.client, "print(6 * 7)")
            assert out.strip() == "42"

            # interrupt, message mode then signal mode
            for mode in ("message", "signal"):
                first.km.kernel_spec.interrupt_mode = mode
                msg_id = first.client.execute("import time; time.sleep(60)")
                await asyncio.sleep(1.0)
                await first.km.interrupt_kernel()
                reply = await reply_to(first.client, msg_id, timeout=20)
                assert reply["content"]["ename"] == "KeyboardInterrupt", mode
                assert await first.km.is_alive()

            # a killed fork server: the next kernel starts by exec, a later one is a fork again
            assert b"zygote.py" in Path(f"/proc/{instance.zygote.pid}/cmdline").read_bytes()
            os.kill(instance.zygote.pid, signal.SIGKILL)
            await asyncio.wait_for(_until_zygote(instance, alive=False), 30)
            async with Kernel(name, kernel_env) as fallback:
                assert not fallback.forked
            await asyncio.wait_for(_until_zygote(instance), 120)
            async with Kernel(name, kernel_env) as again:
                assert again.forked
                out, _ = await execute(again.client, "print('again')")
                assert out.strip() == "again"
        return a, b, c

    a, b, c = asyncio.run(scenario())
    assert a["random"] != b["random"] and a["pid"] != b["pid"]
    assert a["sid"] and b["sid"]
    assert a["gc"] and b["gc"], "the fork server imports without the collector; its kernels collect"
    assert a["env"] == c["env"], _env_difference(a["env"], c["env"])
    assert a["path"] == c["path"] and a["cwd"] == c["cwd"] == str(kernel_env)


async def _until_dead(km: AsyncKernelManager) -> None:
    while await km.is_alive():
        await asyncio.sleep(0.1)


async def _until_zygote(instance, alive: bool = True) -> None:
    while bool(instance.zygote and instance.zygote.alive()) != alive:
        await asyncio.sleep(0.1)


def _env_difference(forked: dict, execd: dict) -> str:
    keys = sorted(k for k in set(forked) | set(execd) if forked.get(k) != execd.get(k))
    return "; ".join(f"{k}: fork {forked.get(k)!r} exec {execd.get(k)!r}" for k in keys)


def test_warm_instance_reuse_image_change_limit_and_delete(kernel_env):
    """In a server (``serve``), the instance outlives its last kernel and the next kernel of the
    stack is a fork in it; once the python overlay's file is replaced, the next kernel gets a
    new instance and the warm one stops; beyond ``warm_limit`` the oldest stops; our own DELETE
    of an image stops the warm instance that mounts it; ``close`` (the server's exit) stops every
    warm one."""
    manager = InstanceManager.for_config(CondaTainerConfig())
    sqf = kernel_env / "images" / "python--3.11.sqf"

    async def scenario():
        manager.serve()
        try:
            async with Kernel(KERNEL, kernel_env) as first:
                warm = first.km.provisioner.instance.name
            assert warm in manager.warm and manager.store.read(warm).warm
            assert warm in running_instances()
            async with Kernel(KERNEL, kernel_env) as second:
                assert second.km.provisioner.instance.name == warm and second.forked
                assert not manager.store.read(warm).warm
            await asyncio.to_thread(_replace, sqf)
            async with Kernel(KERNEL, kernel_env) as third:
                fresh = third.km.provisioner.instance.name
                out, _ = await execute(third.client, "print('fresh')")
                assert out.strip() == "fresh"
            assert fresh != warm and warm not in manager.warm
            await asyncio.to_thread(wait_until, lambda: warm not in running_instances(), 60, "the stale warm stop")
            # warm_limit: the oldest warm instance stops when one more would go over it
            limited = custom_spec(["hello/1.0", "python/3.11"], label="limited", extra_config={"warm_limit": 1})
            KernelspecStore().write(limited)
            async with Kernel(limited.name, kernel_env) as newer:
                newest = newer.km.provisioner.instance.name
            assert list(manager.warm) == [newest]
            await asyncio.to_thread(wait_until, lambda: fresh not in running_instances(), 60, "the oldest warm stop")
            # our own DELETE of an image a warm instance mounts stops that instance first
            await EnvOperations(manager.config, manager).delete("python/3.11")
            assert not manager.warm and newest not in running_instances() and not sqf.exists()
        finally:
            await manager.close()
        return warm, fresh

    warm, fresh = asyncio.run(scenario())
    running = running_instances()
    assert warm not in running and fresh not in running
    assert StateStore(CondaTainerConfig().instance_state_dir).ours() == []
    assert processes_mentioning(fresh) == []


def locks_of(pid: int, inode: int) -> list[str]:
    """The /proc/locks lines of a process on a file."""
    lines = Path("/proc/locks").read_text().splitlines()
    return [line for line in lines if f" {pid} " in line and line.split()[5].endswith(f":{inode}")]


def _replace(image: Path) -> None:
    """A new file under the image's name (as a rebuild and ``mv`` would leave it)."""
    fresh = image.with_name(f".{image.name}.new")
    shutil.copyfile(image, fresh)
    os.replace(fresh, image)


def test_warm_instances_across_a_server_kill_the_cli_and_the_server_exit(kernel_env):
    """A kernel shut down through the REST API leaves its instance warm; the server is SIGKILLed;
    the next server's start stops that instance. ``instances stop --warm`` stops a live server's
    warm instance. A server that exits normally stops its own."""
    server = Server(kernel_env, free_port())
    store = StateStore(CondaTainerConfig().instance_state_dir)

    def warm_one() -> str:
        kernel = server.request("POST", "/api/kernels", {"name": KERNEL})
        server.request("DELETE", f"/api/kernels/{kernel['id']}")
        records = [r for r in store.ours() if r.warm]
        assert len(records) == 1, records
        assert records[0].name in running_instances()
        return records[0].name

    try:
        server.start()
        first = warm_one()
        server.kill()
        assert first in running_instances(), "a SIGKILLed server cannot stop anything"
        server.start()
        wait_until(lambda: first not in running_instances(), 60, "the sweep of the warm orphan")
        # the CLI stops another process's warm instance; that server then starts a new one
        second = warm_one()
        sqf = (kernel_env / "images" / "python--3.11.sqf").resolve().stat().st_ino
        assert locks_of(server.process.pid, sqf), "a warm instance holds CondaTainer's shared lock"
        stopped = subprocess.run(
            [sys.executable, "-m", "kernel_provider.cli.main", "instances", "stop", "--warm"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert stopped.returncode == 0 and f"stopped warm {second}" in stopped.stdout, stopped
        assert second not in running_instances()
        wait_until(lambda: not locks_of(server.process.pid, sqf), 30, "the server to let the images go")
        third = warm_one()
        assert third != second
        server.stop()
        wait_until(lambda: third not in running_instances(), 60, "the exiting server's stop of its warm instance")
        assert poll(lambda: not processes_mentioning(third), 30)
        assert store.ours() == []
    finally:
        server.stop()


def test_the_debugger_answers_in_a_forked_kernel(kernel_env):
    """The fork server imports pydevd (ipykernel's debugger) before it forks: a forked kernel's
    debugger still initializes, attaches and says it is started, cells run under it, and it detaches."""

    async def scenario():
        async with Kernel(shared_spec("debug"), kernel_env) as kernel:
            assert kernel.forked
            client = kernel.client

            async def debug(command: str, arguments: dict | None = None) -> dict:
                msg = client.session.msg(
                    "debug_request", {"type": "request", "seq": 1, "command": command, "arguments": arguments or {}}
                )
                client.control_channel.send(msg)
                while True:
                    reply = await client.get_control_msg(timeout=30)
                    if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
                        return reply["content"]

            initialized = await debug("initialize", {"clientID": "test", "adapterID": "python", "pathFormat": "path"})
            assert initialized.get("success"), initialized
            attached = await debug("attach")
            assert attached.get("success"), attached
            info = await debug("debugInfo")
            assert info["success"] and info["body"]["isStarted"], info
            out, error = await execute(client, "print(sum(range(10)))")
            assert error is None and out.strip() == "45"
            assert (await debug("disconnect", {"restart": False, "terminateDebuggee": False}))["success"]

    asyncio.run(scenario())


def test_a_cold_start_reads_ahead_what_the_last_one_read_and_returns_a_listening_kernel(kernel_env):
    """The fork server lists the files its imports read; the start script of the stack's next
    instance reads them ahead, in the background: a FIFO put in the list is opened by that reader,
    and the kernel starts while the reader waits on it. ``start_kernel`` returns once the kernel
    listens on every channel, so no client waits ZMQ's reconnect interval."""
    name = shared_spec("ahead", warm_timeout=0)  # every start is cold

    async def start() -> AsyncKernelManager:
        km = AsyncKernelManager(kernel_name=name)
        await km.start_kernel(cwd=str(kernel_env))
        try:
            assert channels_listening(km.get_connection_info())
            assert km.provisioner.forked
        except BaseException:
            await km.shutdown_kernel(now=True)  # a failed test leaves no instance behind
            raise
        return km

    async def scenario():
        km = await start()
        try:
            instance = km.provisioner.instance
            listed = read_ahead_list(instance.plan, instance.zygote.python)
            await asyncio.to_thread(
                wait_until, listed.exists, 30, "the list of files read (written once the fork server is idle)"
            )
            files = listed.read_text().splitlines()
            assert any(f.endswith("ipykernel/__pycache__/kernelapp.cpython-311.pyc") for f in files), files[:20]
        finally:
            await km.shutdown_kernel(now=True)

        fifo = runtime_dir() / "read-ahead-probe"
        os.mkfifo(fifo)
        listed.write_text(f"{fifo}\n/no/such/file\n" + "\n".join(files) + "\n")
        km = await start()
        try:
            client = km.client()
            client.start_channels()
            await client.wait_for_ready(timeout=60)
            out, _ = await execute(client, "print(6 * 7)")
            assert out.strip() == "42"
            client.stop_channels()
            # the reader waits on the FIFO: opening it to write succeeds only while a reader has it open
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(writer)
            # replaced by the new fork server's own list
            await asyncio.to_thread(
                wait_until,
                lambda: str(fifo) not in listed.read_text().splitlines(),
                30,
                "the new fork server's list of files read",
            )
        finally:
            fifo.unlink()
            await km.shutdown_kernel(now=True)

    asyncio.run(scenario())
