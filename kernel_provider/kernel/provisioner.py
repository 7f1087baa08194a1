"""The ``condatainer-provisioner``: ipykernel inside a persistent Apptainer instance.

Hooks, in the order ``KernelManager`` calls them (see jupyter_client's
``provisioner_base.py``):

- ``pre_launch``: plan the stack, start or join its instance (binding the
  connection-file directory), make sure its Python can run ipykernel, and wrap the
  kernelspec's argv in ``apptainer exec --cleanenv --env-file … instance://NAME``.
- ``launch_kernel``: spawn that exec as an asyncio subprocess.
- ``send_signal``: SIGINT goes to the kernel's own host PID (signalling the
  ``apptainer`` process would kill the kernel); other signals to the process group.
- ``cleanup(restart)``: a restart keeps the instance; a shutdown releases it, and
  the instance stops with its last kernel.

A start that fails in ``pre_launch`` or ``launch_kernel`` leaves nothing behind (instance, env
file, connection file) and raises :class:`KernelStartError`, whose message jupyter_server sends
to the client.

With ``launcher = "slurm"`` the same hooks hand over to :class:`kernel_provider.kernel.slurm.SlurmKernel`:
a batch job holds the instance on a compute node and the kernel is a step in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning import LocalProvisioner
from tornado import web
from traitlets import Bool, Dict, Enum, Float, List, Unicode

from kernel_provider.host import instanceinfo, supply
from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.host.containers import plan_for_host
from kernel_provider.host.instances import Instance, InstanceManager
from kernel_provider.host.process import apptainer_env
from kernel_provider.host.runtime import runtime_dir, write_private
from kernel_provider.incontainer.constants import LAUNCHER, LIB_DIR, SUPPLY_DIR
from kernel_provider.incontainer.envlock import private_lock_dir
from kernel_provider.incontainer.proctree import descendants
from kernel_provider.kernel import slurm
from kernel_provider.model import command
from kernel_provider.model.plan import StackRequest

# Passed from the server's environment into the kernel: nothing else of the host leaks in.
FORWARDED_ENV = ("JPY_SESSION_NAME", "JPY_PARENT_PID")
KERNEL_ENV = {"PYTHONNOUSERSITE": "1", "PYTHONUNBUFFERED": "1"}
IPYKERNEL_MODULE = "ipykernel_launcher"
IPC_PATH_LIMIT = 108  # sun_path of a unix socket, including the final NUL


class KernelStartError(web.HTTPError):
    """A kernel could not start; the message says why.

    An HTTPError because jupyter_server's API handlers send its message to the client
    (``POST /api/kernels`` → ``{"message": …}``); any other exception becomes
    ``500 {"message": "Unhandled error"}`` with the reason only in the server's log.
    """

    def __init__(self, message: str):
        super().__init__(500, log_message=message)

    def __str__(self) -> str:
        return self.log_message or ""


def launcher_argv(argv: list[str]) -> list[str]:
    """Replace ``-m ipykernel_launcher`` by our bootstrap, which can supply ipykernel."""
    for index in range(len(argv) - 1):
        if argv[index] == "-m" and argv[index + 1] == IPYKERNEL_MODULE:
            script = LAUNCHER
            return [*argv[:index], script, *argv[index + 2 :]]
    return argv


def kernel_pid(exec_pid: int) -> int | None:
    """Host PID of the kernel started by an ``apptainer exec`` process."""
    below = descendants(exec_pid)
    for pid in below:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        if LAUNCHER.encode() in cmdline or IPYKERNEL_MODULE.encode() in cmdline:
            return pid
    return below[-1] if below else None


class CondaTainerProvisioner(LocalProvisioner):
    """Runs a kernelspec's argv inside an Apptainer instance of a CondaTainer stack."""

    overlays = List(
        Unicode(),
        config=True,
        help="Overlays in CondaTainer syntax: names ('python/3.11', 'samtools') or paths ('/x/env.img').",
    )
    base_image = Unicode(
        "", config=True, help="Base .sif; empty means '<distro>--base_image.sif' from the image directories."
    )
    writable = Bool(False, config=True, help="Mount the stack's .img read-write (one writable mount at a time).")
    binds = List(Unicode(), config=True, help="Extra bind paths ('/src' or '/src:/dst[:ro]').")
    env = Dict(value_trait=Unicode(), config=True, help="Extra environment variables for the kernel.")
    apptainer_flags = List(Unicode(), config=True, help="Extra flags for 'apptainer instance start'.")
    share_instance = Bool(
        False,
        config=True,
        help="Kernels with the same stack share one instance (each its own exec); it stops with its last kernel.",
    )
    transport = Enum(
        ["ipc", "tcp"],
        "ipc",
        config=True,
        help="""ZMQ transport. 'ipc' (default): sockets in the user-only runtime directory, so no
        kernel port is open to other users of a shared login node. 'tcp': localhost ports.""",
    )

    launcher = Enum(
        ["local", "slurm"],
        "local",
        config=True,
        help="""Where the kernel runs. 'local' (default): an instance on the server's host.
        'slurm': a SLURM batch job (see slurm_args) holds the allocation and starts the instance
        on its compute node; the kernel runs there as a job step, restarts reuse the job and
        shutdown cancels it. Needs sbatch/srun/squeue/scancel on PATH.""",
    )
    slurm_args = List(
        Unicode(),
        config=True,
        help="""sbatch options for a SLURM kernel's job, e.g. ['--partition=debug',
        '--time=8:00:00', '--cpus-per-task=4', '--mem=16G', '--gpus=1', '--account=lab'].
        The job name and output file are ours. Default: none (one task on one node).""",
    )
    slurm_connect_ip = Unicode(
        "node",
        config=True,
        help="""Address a SLURM kernel listens on (tcp) and the server connects to. Default 'node':
        the job's node address (SLURM's NodeAddr), which a cluster with separate login nodes
        needs (on a single-node cluster it is 127.0.0.1). Or a fixed address, e.g. 127.0.0.1.""",
    )
    slurm_launch_timeout = Float(
        slurm.DEFAULT_LAUNCH_TIMEOUT,
        config=True,
        help="""Seconds a SLURM kernel's job may wait in the queue and start its container; the
        job is cancelled after that. KERNEL_LAUNCH_TIMEOUT in the kernel's launch environment
        takes precedence. Default: 300.""",
    )

    instance: Instance | None = None
    process: asyncio.subprocess.Process | None = None  # type: ignore[assignment]
    _kernel_env_file: Path | None = None
    _slurm_kernel: slurm.SlurmKernel | None = None

    @property
    def _slurm(self) -> slurm.SlurmKernel:
        """The SLURM half of this provisioner (``launcher = "slurm"``), kept across restarts."""
        if self._slurm_kernel is None:
            self._slurm_kernel = slurm.SlurmKernel(self)
        return self._slurm_kernel

    @property
    def manager(self) -> InstanceManager:
        return InstanceManager.for_config(CondaTainerConfig(parent=self.parent))

    def _use_ipc(self) -> None:
        """Point the KernelManager at ipc sockets under the bound runtime directory."""
        km = self.parent
        if km is None or self.transport != "ipc":
            return
        prefix = str(runtime_dir() / f"k-{self.kernel_id[:8]}")
        if len(prefix.encode()) + len("-65535") >= IPC_PATH_LIMIT:
            self.log.warning(
                "CondaTainer kernel %s: runtime directory too long for ipc sockets (%s); using tcp", self.kernel_id, prefix
            )
            return
        km.transport = "ipc"
        km.cache_ports = False
        km.ip = prefix

    def _plan(self, kernel_cwd: str):
        config = self.manager.config
        connection_dir = os.path.dirname(os.path.abspath(self.parent.connection_file)) if self.parent else ""
        locks_dir = private_lock_dir(config.state_dir)
        host_binds = [
            f"{supply.package_dir()}:{LIB_DIR}/kernel_provider:ro",
            f"{supply.supply_root()}:{SUPPLY_DIR}:ro",
            str(runtime_dir()),
            locks_dir,  # the %condatainer magic takes the same env lock as the server
        ]
        request = StackRequest(
            overlays=self.overlays,
            base_image=self.base_image,
            writable=self.writable,
            env={**KERNEL_ENV, **config.container_env, **self.env},
            binds=[*host_binds, *([connection_dir] if connection_dir else []), kernel_cwd, *self.binds],
            flags=self.apptainer_flags,
        )
        return plan_for_host(request, config)

    @contextlib.asynccontextmanager
    async def _undone_on_failure(self) -> AsyncIterator[None]:
        """A failed start leaves nothing behind and tells the user why (see :class:`KernelStartError`)."""
        try:
            yield
        except BaseException as err:
            try:
                await self._abandon_start()
            except Exception:  # noqa: BLE001 - the start's own error is what the user needs
                self.log.exception("CondaTainer kernel %s: cleaning up after a failed start failed", self.kernel_id)
            if isinstance(err, Exception):
                label = self.kernel_spec.display_name if self.kernel_spec else self.kernel_id
                raise KernelStartError(f"The kernel {label!r} could not start: {err}") from err
            raise

    async def _abandon_start(self) -> None:
        """Remove what the start wrote: the instance (or SLURM job), the kernel's env file, the
        connection file (it holds the kernel's key) and its ipc sockets, and jupyter_client's
        record of the start."""
        await self.cleanup(restart=False)
        if self.parent is not None:
            self.parent.cleanup_connection_file()
            self.parent.cleanup_ipc_files()
        self._forget_pending_start()

    def _forget_pending_start(self) -> None:
        """jupyter_client 8 keeps a failed first start among the MultiKernelManager's pending
        kernels; jupyter_server's ``shutdown_all`` then fails on that id ("Kernel does not exist")
        before it stops the event loop, and the server hangs on SIGTERM. Drop the entry (a
        failed restart has none: its kernel is a known one)."""
        multi = getattr(self.parent, "parent", None)
        pending = getattr(multi, "_pending_kernels", None)
        if isinstance(pending, dict) and self.kernel_id not in multi:
            pending.pop(self.kernel_id, None)

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        async with self._undone_on_failure():
            return await self._pre_launch(**kwargs)

    async def _pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        if self.launcher == "slurm":
            kwargs = await self._slurm.pre_launch(kwargs)
            return {**kwargs, "cmd": launcher_argv(self._container_argv(list(kwargs["cmd"])))}
        if self.instance is None:
            self._use_ipc()
        kwargs = await super().pre_launch(**kwargs)
        kernel_cwd = str(kwargs.get("cwd") or os.getcwd())
        manager = self.manager
        if self.instance is None:
            await manager.sweep_orphans_once()
            plan = await asyncio.to_thread(self._plan, kernel_cwd)
            self.instance = await manager.acquire(plan, self.kernel_id, self.share_instance)
        python = await manager.probe_python(self.instance)
        if not python.has_ipykernel:
            await supply.ensure_ipykernel(python.version, python.glibc)
        kwargs["cmd"] = launcher_argv(self._container_argv(list(kwargs["cmd"])))
        return kwargs

    def _container_argv(self, cmd: list[str]) -> list[str]:
        """Undo jupyter_client's swap of ``python`` for the *host's* ``sys.executable``."""
        spec_argv = self.kernel_spec.argv if self.kernel_spec else []
        if cmd and spec_argv and cmd[0] == sys.executable and spec_argv[0] != sys.executable:
            return [spec_argv[0], *cmd[1:]]
        return cmd

    def _kernel_env(self, launch_env: dict[str, str]) -> list[tuple[str, str]]:
        forwarded = [(key, launch_env[key]) for key in FORWARDED_ENV if key in launch_env]
        spec_env = list((self.kernel_spec.env or {}).items()) if self.kernel_spec else []
        info = [("CONDATAINER_INFO", str(instanceinfo.path(self.instance.name)))]
        return [*self.instance.plan.env, *spec_env, *forwarded, *info]

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        async with self._undone_on_failure():
            return await self._launch_kernel(cmd, **kwargs)

    async def _launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        if self.launcher == "slurm":
            return await self._slurm.launch(cmd, kwargs)
        assert self.instance is not None
        env_file = runtime_dir() / f"kernel-{self.kernel_id}.env"
        self._kernel_env_file = write_private(env_file, command.render_env_file(self._kernel_env(kwargs.get("env", {}))))
        cwd = str(kwargs.get("cwd") or os.getcwd())
        argv = command.instance_exec_argv(self.manager.apptainer, self.instance.name, str(env_file), cmd, pwd=cwd)
        self.log.debug("CondaTainer kernel %s: %s", self.kernel_id, argv)
        self.process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, env=apptainer_env(), start_new_session=True
        )
        self.pid = self.pgid = self.process.pid
        self.cwd = cwd
        return self.connection_info

    async def poll(self) -> int | None:
        return self.process.returncode if self.process else 0

    async def wait(self) -> int | None:
        if not self.process:
            return 0
        returncode = await self.process.wait()
        self.process = None
        return returncode

    async def send_signal(self, signum: int) -> None:
        if self.launcher == "slurm":
            return await self._slurm.send_signal(signum)
        if not self.process or self.process.returncode is not None:
            return
        if signum == signal.SIGINT:
            # The kernel is the innermost process; SIGINT to apptainer would kill it.
            # Finding it reads every /proc/PID/stat: thousands of files on a busy login node.
            kernel = await asyncio.to_thread(kernel_pid, self.process.pid)
            if kernel:
                os.kill(kernel, signum)
            return
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass

    async def kill(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGKILL)

    async def terminate(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGTERM)

    async def cleanup(self, restart: bool = False) -> None:
        await super().cleanup(restart=restart)
        if self._kernel_env_file:
            self._kernel_env_file.unlink(missing_ok=True)
            self._kernel_env_file = None
        if not restart:
            await (self._slurm.release() if self.launcher == "slurm" else self._release_instance())

    async def _release_instance(self) -> None:
        instance, self.instance = self.instance, None
        if instance is not None:
            await self.manager.release(instance, self.kernel_id)

    async def get_provisioner_info(self) -> dict[str, Any]:
        info = await super().get_provisioner_info()
        info["instance"] = self.instance.name if self.instance else None
        return info
