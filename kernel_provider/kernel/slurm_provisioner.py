"""The ``condatainer-slurm-provisioner``: the kernel's instance runs in a SLURM job.

One batch job per kernel holds the allocation and the instance on its compute node; the
kernel is a job step in it (:mod:`kernel_provider.kernel.slurm` says why, and runs SLURM).

- ``pre_launch``: submit the job and wait for its instance (first start, or after the job
  ended), make sure the stack's Python has ipykernel, write the connection file for tcp on
  the node's address, with ports 0 on a first start: the kernel binds ports free on its node
  and writes them back.
- ``launch_kernel``: the exec is a job step (``srun --overlap``); a first start waits for
  the ports the kernel bound.
- ``send_signal``: TERM/KILL to the kernel's step; SIGINT cannot be delivered (interrupt by
  message).
- ``cleanup``: a restart keeps the job; a shutdown cancels it.

The kernel's log (:mod:`~kernel_provider.kernel.kernellog`) holds the step's output, the job's
output and the instance's Apptainer log on the node, for a running kernel and a failed start.

While the job waits, the start reports SLURM's reason, expected start and place in the
queue; a shutdown then (:func:`cancel_start`) cancels the job at once. While it runs, a
:class:`~kernel_provider.kernel.walltime.WalltimeWatch` counts down its time limit.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from jupyter_client.connect import KernelConnectionInfo, port_names
from jupyter_client.localinterfaces import is_local_ip
from jupyter_core.paths import jupyter_runtime_dir
from traitlets import Float, List, Unicode

from kernel_provider.host import instanceinfo
from kernel_provider.host.instances import Instance
from kernel_provider.host.runtime import write_private
from kernel_provider.kernel import kernellog, notices
from kernel_provider.kernel.provisioner_base import CondaTainerProvisionerBase, Placement, stack_label
from kernel_provider.kernel.slurm import (
    CONNECT_TO_NODE,
    DEFAULT_LAUNCH_TIMEOUT,
    LAUNCH_TIMEOUT_VARIABLE,
    STEP_TIMEOUT,
    JobState,
    SlurmAllocation,
    SlurmError,
    StartCancelledError,
    proxy_env,
    queued_message,
    state_store,
    sweep_orphans_once,
    without_outer_job,
)
from kernel_provider.kernel.slurm_queue import QueuePlace, pending_message
from kernel_provider.kernel.walltime import WalltimeWatch, report_end
from kernel_provider.model.plan import ContainerPlan

# Kernels whose job waits in the queue now, and what cancels their start (see cancel_start).
_waiting: dict[str, asyncio.Event] = {}


def cancel_start(kernel_id: str) -> bool:
    """Stop a kernel's start while its job waits in the queue; the job is cancelled at once.
    False when the kernel is not waiting (it runs, or never was a SLURM kernel)."""
    event = _waiting.get(kernel_id)
    if event is None:
        return False
    event.set()
    return True


def waiting_kernels() -> list[str]:
    """Kernel ids whose job waits in the queue (the server cancels them as it stops)."""
    return list(_waiting)


class CondaTainerSlurmProvisioner(CondaTainerProvisionerBase):
    """A kernel in an Apptainer instance that a SLURM batch job holds on a compute node.

    Needs sbatch/srun/squeue/scancel on PATH, and a Jupyter runtime directory that the
    login and compute nodes share (it is under ``$HOME`` by default).
    """

    slurm_args = List(
        Unicode(),
        config=True,
        help="""sbatch options for a SLURM kernel's job, e.g. ['--partition=debug',
        '--time=8:00:00', '--cpus-per-task=4', '--mem=16G', '--gpus=1', '--account=lab'].
        The job name and output file are ours. Default: none (one task on one node).""",
    )
    slurm_connect_ip = Unicode(
        CONNECT_TO_NODE,
        config=True,
        help="""Address a SLURM kernel listens on (tcp) and the server connects to. Default 'node':
        the job's node address (SLURM's NodeAddr), which a cluster with separate login nodes
        needs (on a single-node cluster it is 127.0.0.1). Or a fixed address, e.g. 127.0.0.1.""",
    )
    slurm_launch_timeout = Float(
        DEFAULT_LAUNCH_TIMEOUT,
        config=True,
        help="""Seconds a SLURM kernel's job may wait in the queue and start its container; the
        job is cancelled after that. KERNEL_LAUNCH_TIMEOUT in the kernel's launch environment
        takes precedence. Default: 300.""",
    )

    slurm_walltime_warnings = List(
        Float(),
        [15.0, 5.0],
        config=True,
        help="""Minutes before a SLURM kernel's time limit at which the notebook is warned (a
        notification, the log and the event bus). Default: 15 and 5.""",
    )
    slurm_walltime_poll = Float(
        60.0,
        config=True,
        help="""Seconds between looks at a running SLURM kernel's job (squeue): its end time, which
        an administrator may change, and whether it still runs. Warnings come on time regardless.""",
    )

    allocation: SlurmAllocation | None = None  # the kernel's job, kept across restarts
    _watch: WalltimeWatch | None = None
    _connection_file: Path | None = None  # written here, so removed here (jupyter_client removes its own only)

    @property
    def instance(self) -> Instance | None:
        """The instance the kernel's job runs."""
        return self.allocation.instance if self.allocation else None

    def launch_timeout(self, env: Mapping[str, str]) -> float:
        """``KERNEL_LAUNCH_TIMEOUT`` from the launch environment, else ``slurm_launch_timeout``."""
        try:
            return float(env[LAUNCH_TIMEOUT_VARIABLE])
        except (KeyError, ValueError):
            return float(self.slurm_launch_timeout)

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """Called by ``KernelManager.pre_start_kernel`` before every start and restart.

        Gets the job (first start, or after its job ended), makes sure the stack's Python has
        ipykernel and writes the connection file. Returns ``launch_kernel``'s kwargs: ``cmd``
        (the kernelspec's argv for the container's Python) and ``env``.

        LocalProvisioner's pre_launch is not in the way on purpose: it refuses addresses that
        are not on this host and picks ports that are free *here*; the base class's (env
        substitutions, ``_finalize_env``) runs.
        """
        async with self._undone_on_failure():
            km = self.parent
            km.transport, km.cache_ports = "tcp", False  # ipc does not cross nodes
            if not km.connection_file:
                km.connection_file = os.path.join(jupyter_runtime_dir(), f"kernel-{self.kernel_id}.json")
            extra_arguments = kwargs.pop("extra_arguments", [])
            kwargs.pop("transport_encryption", None)
            if self.allocation is not None:
                state = await self.allocation.state()
                if state is None or state.state != "RUNNING":
                    # A job that reached its time limit (or was cancelled by hand): the restart
                    # that follows the kernel's death gets a new job instead of failing forever.
                    report_end(self.kernel_id, self.allocation.job_id, state, self.log)
                    await self._release()
            if self.allocation is None:
                await self._allocate(str(kwargs.get("cwd") or os.getcwd()), kwargs.get("env") or os.environ)
            await self._ensure_ipykernel(self.allocation.probe_python())
            self._prepare_connection_file(await self.connect_ip())
            cmd = km.format_kernel_cmd(extra_arguments=extra_arguments)
            return self._in_container(await super().pre_launch(cmd=cmd, **kwargs))

    async def _allocate(self, kernel_cwd: str, env: Mapping[str, str]) -> None:
        """Submit the kernel's job and wait until its instance is up; the first SLURM kernel of
        this server cancels the jobs of a crashed one."""
        manager = self.manager
        self.progress.step("stack", f"reading the stack ({', '.join(self.overlays) or 'no overlays'})")
        store = state_store(manager.config)
        await sweep_orphans_once(store, self.log)
        plan = await asyncio.to_thread(self._plan, kernel_cwd)
        self.allocation = SlurmAllocation.for_kernel(plan, self.kernel_id, store, manager.apptainer, self.log)
        self.progress.step("queue", "submitting the kernel's SLURM job")
        job_id = await self.allocation.submit(self.slurm_args)
        kernellog.track(self.kernel_id, self.log_sources())
        self.placement = Placement(instance=self.allocation.name, slurm_job=job_id)
        self.log.info("CondaTainer kernel %s: submitted job %s (%s)", self.kernel_id, job_id, self.allocation.name)
        cancelled = _waiting[self.kernel_id] = asyncio.Event()
        try:
            state = await self.allocation.wait_ready(
                self.launch_timeout(env), self._queued, cancelled, partial(self._job_changed, job_id, plan)
            )
        except StartCancelledError as err:
            notices.board.update(
                self.kernel_id, notices.START_CANCELLED, job_id=job_id, ended=notices.START_CANCELLED, message=str(err)
            )
            raise
        finally:
            _waiting.pop(self.kernel_id, None)
        kernellog.track(self.kernel_id, self.log_sources())  # now with the instance's log on the node
        await instanceinfo.write(self.instance, manager.config, await manager.apptainer_version())  # for the magic
        self.log.info("CondaTainer kernel %s: job %s running on %s", self.kernel_id, job_id, self.allocation.node)
        self._watch = WalltimeWatch(
            self.kernel_id, self.allocation, self.slurm_walltime_warnings, self.slurm_walltime_poll, self.log
        )
        await self._watch.start(state)

    async def _resume(self) -> bool:
        """An adopted kernel's job: still running, so this server takes it (and its countdown) over."""
        manager = self.manager
        store = state_store(manager.config)
        record = store.read(self.placement.instance)
        if record is None:
            return False
        plan = await asyncio.to_thread(self._plan, self.cwd or os.getcwd())
        resumed = await SlurmAllocation.resume(record, plan, self.kernel_id, store, manager.apptainer, self.log)
        if resumed is None:
            return False
        self.allocation, state = resumed
        self._connection_file = Path(self.parent.connection_file)
        self._watch = WalltimeWatch(
            self.kernel_id, self.allocation, self.slurm_walltime_warnings, self.slurm_walltime_poll, self.log
        )
        await self._watch.start(state)
        return True

    def _queued(self, job: JobState) -> None:
        """The job waits: tell the notebook why and when SLURM expects it to start."""
        notices.board.update(
            self.kernel_id,
            notices.QUEUED,
            job_id=self.allocation.job_id,
            state=job.state,
            partition=job.partition,
            reason=job.reason,
            expected_start=job.start_time,
            ended="",
            message=queued_message(self.allocation.job_id, job),
        )

    def _job_changed(self, job_id: str, plan: ContainerPlan, job: JobState, place: QueuePlace | None) -> None:
        """The launch progress of a job that waits in the queue (its place and why) or starts its instance."""
        if job.state == "PENDING":
            self.progress.step("queue", pending_message(job_id, job.partition, job.reason, place))
        elif job.state == "RUNNING":
            self.progress.step(
                "instance", f"starting instance on {job.node} (job {job_id}), mounting {stack_label(plan)}"
            )

    def log_sources(self) -> list[kernellog.LogSource]:
        """The job's output and its instance's Apptainer log on the node (:mod:`~kernel_provider.kernel.kernellog`)."""
        return self.allocation.log_sources()

    def shell_argv(self) -> list[str]:
        """The base class's shell in the kernel's instance, as a step of the kernel's job on its node
        with a terminal there (``srun --pty``): the kernel's environment, its node, and an end with
        the job when the kernel shuts down. :class:`ValueError` when the kernel is not running."""
        shell = super().shell_argv()
        step = self.allocation.step(shell, f"{self.allocation.name}-terminal", pty=True)
        return without_outer_job(step, os.environ)

    async def connect_ip(self) -> str:
        """Where the kernel listens: ``slurm_connect_ip``, or the node's address for ``node``."""
        wanted = self.slurm_connect_ip
        if wanted == CONNECT_TO_NODE:
            return await self.allocation.node_address()
        if is_local_ip(wanted) and not await self._node_is_this_host():
            self.log.warning(
                "CondaTainer kernel on node %s listens on %s, which this host cannot reach; "
                "set slurm_connect_ip = 'node'",
                self.allocation.node,
                wanted,
            )
        return wanted

    async def _node_is_this_host(self) -> bool:
        try:
            return is_local_ip(await self.allocation.node_address())
        except (OSError, IndexError, SlurmError):
            return True  # unknown: no warning

    def _prepare_connection_file(self, ip: str) -> None:
        """A first start (or one on another address) gets a connection file with ports 0:
        the kernel binds ports free on its node and writes them back (ipykernel does so
        for ports given as 0). A restart keeps the file, so clients keep their ports.

        Written here, not by ``KernelManager.write_connection_file``: that one picks ports
        free on *this* host, for an address it must be able to bind."""
        km = self.parent
        if ip == km.ip and all(getattr(km, name) for name in port_names) and os.path.exists(km.connection_file):
            return
        km.ip = ip
        for name in port_names:
            setattr(km, name, 0)
        info = km.get_connection_info()
        info["key"] = info["key"].decode()
        info["kernel_name"] = km.kernel_name
        self._connection_file = write_private(Path(km.connection_file), json.dumps(info, indent=1))

    @property
    def step_name(self) -> str:
        """The kernel's step in the job (``scancel`` finds it by this name)."""
        return f"{self.allocation.name}-kernel"

    def _kernel_env(self, launch_env: dict[str, str]) -> list[tuple[str, str]]:
        """The base class's, after CondaTainer's proxy variables when its proxy answers from the node."""
        return [*proxy_env(self.allocation.proxy), *super()._kernel_env(launch_env)]

    async def _spawn(self, exec_argv: list[str]) -> asyncio.subprocess.Process:
        """The exec as a step of the kernel's job, its output into the kernel's log file."""
        return await self.allocation.start_step(exec_argv, self.step_name, self.kernel_output)

    async def _connection_info_once_started(self) -> KernelConnectionInfo:
        """The connection info with the ports the kernel bound (a first start waits for them)."""
        km = self.parent
        if not all(getattr(km, name) for name in port_names):
            await self._load_bound_ports()
        self.connection_info = km.get_connection_info()
        return self.connection_info

    async def _load_bound_ports(self) -> None:
        """Wait until the kernel wrote the ports it bound into its connection file; load them."""
        km, process = self.parent, self.process
        deadline = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < deadline:
            info = self._read_connection_file()
            if all(info.get(name) for name in port_names):
                km.load_connection_info(info)
                return
            if process.returncode is not None:
                raise SlurmError(
                    f"the kernel step in job {self.allocation.job_id} exited ({process.returncode}) "
                    "before it listened; see the kernel's log (the CondaTainer panel shows it)"
                )
            await asyncio.sleep(0.1)
        raise SlurmError(f"the kernel in job {self.allocation.job_id} did not listen within {STEP_TIMEOUT:g} s")

    def _read_connection_file(self) -> dict[str, Any]:
        """The connection file as it is now: empty while missing or half written."""
        try:
            return json.loads(Path(self.parent.connection_file).read_text())
        except (OSError, ValueError):
            return {}

    async def send_signal(self, signum: int) -> None:
        """``KernelManager.signal_kernel`` (and ``kill``/``terminate`` here): TERM/KILL go to the
        kernel's step; SIGINT cannot be delivered (``srun`` does not forward it): kernels are
        interrupted by message."""
        process = self.process
        if not process or process.returncode is not None or self.allocation is None:
            return
        if signum == signal.SIGINT:
            self.log.warning("CondaTainer SLURM kernels are interrupted by message (interrupt_mode 'message')")
            return
        name = signal.Signals(signum).name.removeprefix("SIG")
        if not await self.allocation.signal_step(self.step_name, name):
            try:
                process.send_signal(signum)  # srun forwards TERM; KILL ends srun itself
            except ProcessLookupError:
                pass

    async def cleanup(self, restart: bool = False) -> None:
        """The base class's (env file; a shutdown cancels the job), and at a shutdown the
        connection file written here."""
        await super().cleanup(restart=restart)
        if not restart:
            notices.board.forget(self.kernel_id)  # a shutdown: the kernel's job is over and nothing is left to tell
            if self._connection_file is not None:
                self._connection_file.unlink(missing_ok=True)
                self._connection_file = None

    async def _release(self) -> None:
        """Stop the instance and end the job (shutdown, a failed start, or a job that ended)."""
        allocation, self.allocation = self.allocation, None
        watch, self._watch = self._watch, None
        self.placement = Placement()
        if watch is not None:
            await watch.stop()
        if allocation is not None:
            await allocation.release()
