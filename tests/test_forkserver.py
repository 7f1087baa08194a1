"""Kernels forked by an instance's fork server, and warm instances: real kernels in real instances."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
from conftest import KERNEL, Server, free_port, poll, processes_mentioning, reply_to, running_instances, wait_until
from conftest import run_cell as execute
from jupyter_client.manager import AsyncKernelManager

from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.host.instances import InstanceManager
from kernel_provider.host.state import StateStore
from kernel_provider.incontainer.proctree import descendants
from kernel_provider.kernel.kernelspecs import KernelspecStore, custom_spec

pytestmark = pytest.mark.integration

FACTS = (
    "import json, os, random, sys; "
    "print(json.dumps({'random': random.random(), 'pid': os.getpid(), 'env': dict(os.environ), "
    "'path': sys.path, 'cwd': os.getcwd(), 'sid': os.getsid(0) == os.getpid()}))"
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


def zygote_pid(instance) -> int:
    """The host PID of the fork server's Python (below its ``apptainer exec``)."""
    for pid in descendants(instance.zygote.process.pid):
        if b"zygote.py" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    raise AssertionError("no fork server process")


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
            os.kill(zygote_pid(instance), signal.SIGKILL)
            await asyncio.wait_for(instance.zygote.process.wait(), 30)
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
    assert a["env"] == c["env"], _env_difference(a["env"], c["env"])
    assert a["path"] == c["path"] and a["cwd"] == c["cwd"] == str(kernel_env)


async def _until_dead(km: AsyncKernelManager) -> None:
    while await km.is_alive():
        await asyncio.sleep(0.1)


async def _until_zygote(instance) -> None:
    while not (instance.zygote and instance.zygote.alive()):
        await asyncio.sleep(0.1)


def _env_difference(forked: dict, execd: dict) -> str:
    keys = sorted(k for k in set(forked) | set(execd) if forked.get(k) != execd.get(k))
    return "; ".join(f"{k}: fork {forked.get(k)!r} exec {execd.get(k)!r}" for k in keys)
