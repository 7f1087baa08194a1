"""What both CondaTainer provisioners share: ipykernel inside an Apptainer instance of a stack.

One provisioner class per launcher, each with its own entry point (the layout of
gateway_provisioners), both on :class:`CondaTainerProvisionerBase`:

- ``condatainer-provisioner`` (:mod:`kernel_provider.kernel.provisioner`): the instance runs
  on the server's host.
- ``condatainer-slurm-provisioner`` (:mod:`kernel_provider.kernel.slurm_provisioner`): a SLURM
  batch job holds the instance on a compute node and the kernel is a step in that job.

Hooks, in the order ``KernelManager`` calls them (see jupyter_client's ``provisioner_base.py``):

- ``pre_launch`` (each launcher's own): get the stack's instance, make sure its Python can run
  ipykernel, write the connection file; returns the kernelspec's argv made for the container.
- ``launch_kernel`` (here): ``apptainer exec --cleanenv --env-file … instance://NAME`` of that
  argv, started by the launcher's :meth:`~CondaTainerProvisionerBase._spawn` (the local
  launcher first asks the instance's fork server for a fork: :mod:`kernel_provider.host.zygote`).
  The kernel gets the record of its stack's images (:mod:`kernel_provider.host.stackimages`) for
  its ``kernel_info_reply``; the local launcher makes it while the instance starts.
- ``send_signal`` (each launcher's own), ``poll``, ``wait``, ``kill``, ``terminate``.
- ``cleanup(restart)``: a restart keeps the instance; a shutdown releases it.

A start that fails in ``pre_launch`` or ``launch_kernel`` leaves nothing behind (instance or
job, env file, connection file) and raises :class:`KernelStartError`, whose message
jupyter_server sends to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import sys
import time
from abc import abstractmethod
from collections.abc import AsyncIterator, Awaitable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.provisioning import LocalProvisioner
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase
from jupyter_client.session import Session
from tornado import web
from traitlets import Bool, Dict, Integer, List, Unicode

from kernel_provider.host import instanceinfo, stackimages, supply
from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.host.containers import plan_for_host
from kernel_provider.host.instances import Instance, InstanceManager
from kernel_provider.host.python import PythonInfo
from kernel_provider.host.runtime import runtime_dir, write_private
from kernel_provider.host.state import Owner, process_start_time
from kernel_provider.host.zygote import ForkedKernel
from kernel_provider.incontainer.constants import LAUNCHER, LIB_DIR, SHELL, STACK_RECORD_VAR, SUPPLY_DIR
from kernel_provider.incontainer.envlock import private_lock_dir
from kernel_provider.kernel import kernellog, persistence
from kernel_provider.kernel.progress import LaunchProgress
from kernel_provider.model import command
from kernel_provider.model.plan import ContainerPlan, StackRequest

# Passed from the server's environment into the kernel: nothing else of the host leaks in.
FORWARDED_ENV = ("JPY_SESSION_NAME", "JPY_PARENT_PID")
KERNEL_ENV = {"PYTHONNOUSERSITE": "1", "PYTHONUNBUFFERED": "1"}
NEVER_CULL = 10**9  # seconds (31 years): jupyter_server's culler has no "never" per kernel
IPYKERNEL_MODULE = "ipykernel_launcher"
READY_TIMEOUT = 120.0  # how long the launch progress waits for a started kernel's first reply
SHUTDOWN_WATCH = 1.0  # seconds a shutdown request watches the kernel end before KernelManager takes over


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


def _continued(message: str) -> str:
    """A message as the rest of a sentence: its first word lowercased unless it is a name (PATH, Apptainer)."""
    if len(message) > 1 and message[0].isupper() and message[1].islower() and not message.startswith("Apptainer"):
        return message[0].lower() + message[1:]
    return message


def stack_label(plan: ContainerPlan) -> str:
    """The stack in a few words for the launch progress: ``ubuntu24/base_image + python/3.11, demo.img (rw)``."""
    overlays = [f"{o.name}.img" if o.kind == "img" else o.name for o in plan.overlays]
    writable = " (read-write)" if plan.writable and plan.env_image else ""
    return f"{plan.base_image.name} + {', '.join(overlays) or 'no overlays'}{writable}"


def launcher_argv(argv: list[str]) -> list[str]:
    """Replace ``-m ipykernel_launcher`` by our bootstrap, which can supply ipykernel."""
    for index in range(len(argv) - 1):
        if argv[index] == "-m" and argv[index + 1] == IPYKERNEL_MODULE:
            return [*argv[:index], LAUNCHER, *argv[index + 2 :]]
    return argv


def kernel_request(config: CondaTainerConfig, stack: StackRequest) -> StackRequest:
    """The container of a kernel on ``stack``: the kernel's variables before the stack's own,
    our package, the supplied ipykernel, the runtime directory and the env locks bound in.

    One function for every container that must give what a kernel gets (its instance, a
    terminal on an overlay without a kernel: :mod:`kernel_provider.kernel.stackshell`)."""
    host_binds = [
        f"{supply.package_dir()}:{LIB_DIR}/kernel_provider:ro",
        f"{supply.supply_root()}:{SUPPLY_DIR}:ro",
        str(runtime_dir()),
        private_lock_dir(config.state_dir),  # the %condatainer magic takes the same env lock as the server
    ]
    return replace(
        stack,
        env={**KERNEL_ENV, **config.container_env, **stack.env},
        binds=[*host_binds, *stack.binds],
    )


@dataclass(frozen=True)
class Placement:
    """Where a kernel runs, by name: what outlives this process (``get_provisioner_info``).

    Names only, as jupyter_client's LocalProvisioner keeps a pid and not its process: a
    provisioner loaded elsewhere knows which instance (and job) held the kernel, it does not
    hold them itself.
    """

    instance: str = ""  # the Apptainer instance
    slurm_job: str = ""  # the SLURM job that holds the instance (SLURM kernels)


class CondaTainerProvisionerBase(KernelProvisionerBase):
    """Runs a kernelspec's argv inside an Apptainer instance of a CondaTainer stack.

    Where the instance runs is the subclass's: it implements ``pre_launch`` (get the instance,
    write the connection file), :meth:`_spawn`, ``send_signal`` and :meth:`_release`.
    """

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
    cull_idle_timeout = Integer(
        None,
        allow_none=True,
        config=True,
        help="""Idle seconds after which jupyter_server's culler shuts this kind of kernel down, in
        place of MappingKernelManager.cull_idle_timeout (which must be > 0: it turns the culler
        on). Set per launcher, e.g. c.CondaTainerSlurmProvisioner.cull_idle_timeout = 1800 to free
        allocations sooner than login-node kernels; 0 or less: never cull these. Default: the
        server's timeout.""",
    )

    instance: Instance | None = None  # the instance the kernel runs in, from the first start to the shutdown
    placement = Placement()
    process: asyncio.subprocess.Process | ForkedKernel | None = None  # what launch_kernel started
    cwd: str | None = None  # the kernel's working directory
    _env_file: Path | None = None
    _stack_record: asyncio.Future | None = None  # the stack record, made in a thread as the kernel starts
    _record_file: Path | None = None  # the record handed to the kernel (incontainer.stackinfo)
    _progress: LaunchProgress | None = None
    kernel_output: IO[bytes] | None = None  # where _spawn sends the exec's output (kernellog)
    container_python = "python3"  # the kernel's Python in the container (its argv[0])
    _ready_watch: asyncio.Task | None = None

    # The kernel's paths are the server's (a compute node shares them): resolved as a local kernel's.
    resolve_path = LocalProvisioner.resolve_path

    @property
    def manager(self) -> InstanceManager:
        """This process's instance manager for the server's CondaTainer configuration."""
        return InstanceManager.for_config(CondaTainerConfig(parent=self.parent))

    # --- the start, in the subclass's pre_launch and in launch_kernel --------------------------

    @property
    def progress(self) -> LaunchProgress:
        """The steps of the start under way (:mod:`~kernel_provider.kernel.progress`); a start
        after the last one ended (a restart) begins a new record."""
        if self._progress is None or self._progress.finished:
            name = getattr(self.parent, "kernel_name", "") or ""
            self._progress = LaunchProgress(self.kernel_id, name, self.log)
        return self._progress

    def _plan(self, kernel_cwd: str) -> ContainerPlan:
        """The stack's container (:func:`kernel_request`) with the connection file's directory
        bound in. Blocking (probes images): call it in a thread."""
        config = self.manager.config
        connection_dir = os.path.dirname(os.path.abspath(self.parent.connection_file)) if self.parent else ""
        request = kernel_request(
            config,
            StackRequest(
                overlays=self.overlays,
                base_image=self.base_image,
                writable=self.writable,
                env=self.env,
                binds=[*([connection_dir] if connection_dir else []), kernel_cwd, *self.binds],
                flags=self.apptainer_flags,
            ),
        )
        return plan_for_host(request, config)

    async def _ensure_ipykernel(self, probe: Awaitable[PythonInfo]) -> None:
        """Probe the stack's Python; one without ipykernel gets it supplied (built once per Python version)."""
        self.progress.step("python", "checking the stack's Python")
        python = await probe
        if not python.has_ipykernel:
            version = ".".join(map(str, python.version))
            first = "" if supply.is_supplied(python.version) else " (first time for this Python: downloads ipykernel)"
            self.progress.step("supply", f"supplying ipykernel for Python {version}{first}")
            await supply.ensure_ipykernel(python.version, python.glibc)

    def _in_container(self, launch_kwargs: dict[str, Any]) -> dict[str, Any]:
        """``pre_launch``'s result with its ``cmd`` made for the container: the kernelspec's own
        ``python`` where jupyter_client put the *host's* ``sys.executable``, and our bootstrap
        in place of ``-m ipykernel_launcher``."""
        cmd = list(launch_kwargs["cmd"])
        spec_argv = self.kernel_spec.argv if self.kernel_spec else []
        if cmd and spec_argv and cmd[0] == sys.executable and spec_argv[0] != sys.executable:
            cmd[0] = spec_argv[0]
        return {**launch_kwargs, "cmd": launcher_argv(cmd)}

    def _kernel_env(self, launch_env: dict[str, str]) -> list[tuple[str, str]]:
        """The kernel's whole environment (``--cleanenv``): the stack's, the kernelspec's, the
        server's session variables, where the magic finds the instance's description and where
        the kernel finds its stack record."""
        forwarded = [(key, launch_env[key]) for key in FORWARDED_ENV if key in launch_env]
        spec_env = list((self.kernel_spec.env or {}).items()) if self.kernel_spec else []
        info = [("CONDATAINER_INFO", str(instanceinfo.path(self.instance.name)))]
        record = [(STACK_RECORD_VAR, str(self._record_file))] if self._record_file else []
        return [*self.instance.plan.env, *spec_env, *forwarded, *info, *record]

    def _begin_stack_record(self, plan: ContainerPlan) -> None:
        """Start making the kernel's stack record in a thread (it reads each image's head): the
        start goes on meanwhile and ``launch_kernel`` waits for it."""
        self._stack_record = asyncio.ensure_future(asyncio.to_thread(stackimages.plan_record, plan))

    async def _write_stack_record(self) -> Path | None:
        """The kernel's stack record as a file in the runtime directory for the kernel, which adds
        its env's revision (:mod:`kernel_provider.incontainer.stackinfo`). A record that cannot be
        made is logged and left out: the kernel starts anyway, its notebook then records no stack."""
        if self._stack_record is None:  # a restart, or a launcher that did not start it early (SLURM)
            self._begin_stack_record(self.instance.plan)
        pending, self._stack_record = self._stack_record, None
        try:
            record = await pending
        except OSError as err:
            self.log.warning("CondaTainer kernel %s: no stack record for its notebook: %s", self.kernel_id, err)
            return None
        path = runtime_dir() / f"kernel-{self.kernel_id}.stack.json"
        return write_private(path, json.dumps(record))

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        """Called by ``KernelManager.launch_kernel`` after ``pre_launch``, with its ``cmd`` and
        kwargs (``env``, ``cwd``): starts ``cmd`` in the instance with the kernel's env file and
        returns the kernel's connection info. The env file stays for the kernel's terminal."""
        async with self._undone_on_failure():
            self._apply_cull_timeout()
            self.cwd = str(kwargs.get("cwd") or os.getcwd())
            self.container_python = cmd[0]
            self._record_file = await self._write_stack_record()
            env_file = runtime_dir() / f"kernel-{self.kernel_id}.env"
            kernel_env = command.render_env_file(self._kernel_env(kwargs.get("env", {})), oci=self.instance.oci)
            self._env_file = write_private(env_file, kernel_env)
            self.progress.step("kernel", f"starting the kernel in {self.instance.name}")
            kernellog.track(self.kernel_id, self.log_sources())
            self.process = await self._start_kernel_process(cmd, kwargs, env_file)
            self.progress.step("wait", "waiting for the kernel")
            info = await self._connection_info_once_started()
            await self._save_record()
            return info

    async def _start_kernel_process(self, cmd: list[str], kwargs: dict[str, Any], env_file: Path) -> Any:
        """The kernel's ``apptainer exec`` in the instance (in OCI mode: its own container), its
        output into the kernel's log file."""
        apptainer = self.manager.apptainer
        if self.instance.oci:  # no instance: the kernel is its own exec --oci container
            argv = command.oneshot_exec_argv(apptainer, self.instance.plan, str(env_file), cmd, self.cwd, oci=True)
        else:
            argv = command.instance_exec_argv(apptainer, self.instance.name, str(env_file), cmd, pwd=self.cwd)
        self.log.debug("CondaTainer kernel %s: %s", self.kernel_id, argv)
        with kernellog.open_kernel_log(self.kernel_id) as self.kernel_output:
            process = await self._spawn(argv)
        if self.instance.oci:
            self.manager.note_oci_process(self.instance, process.pid)
        return process

    def log_sources(self) -> list[kernellog.LogSource]:
        """The kernel's logs besides its output (``GET …/kernels/ID/logs``): its instance's Apptainer log."""
        return kernellog.instance_logs(self.instance.name)

    def _apply_cull_timeout(self) -> None:
        """jupyter_server's culler reads a kernel's own timeout from its kernelspec's metadata
        (``cull_idle_timeout``): put this launcher's there, in the kernel's copy of the spec."""
        if self.cull_idle_timeout is not None and self.kernel_spec is not None:
            timeout = self.cull_idle_timeout if self.cull_idle_timeout > 0 else NEVER_CULL
            self.kernel_spec.metadata["cull_idle_timeout"] = timeout

    async def post_launch(self, **kwargs: Any) -> None:
        """Called by ``KernelManager.post_start_kernel``: the launch progress follows the kernel
        until its first reply (jupyter_server answers the start before that)."""
        await super().post_launch(**kwargs)
        if isinstance(self.parent, AsyncKernelManager):
            self._ready_watch = asyncio.ensure_future(self._report_ready(self.parent, self.progress))

    @staticmethod
    async def _report_ready(km: AsyncKernelManager, progress: LaunchProgress) -> None:
        """Ask the kernel for ``kernel_info`` until it answers (ready), exits or stays silent (failed).

        A shell channel and a Session of its own: a Session shared with the server's clients
        would see their messages' signatures twice and refuse them as replays.
        """
        session = Session(key=km.session.key, signature_scheme=km.session.signature_scheme)
        client = km.client(session=session)
        client.start_channels(iopub=False, stdin=False, hb=False, control=False)
        deadline = time.monotonic() + READY_TIMEOUT
        try:
            while True:
                client.kernel_info()
                try:
                    reply = await client.get_shell_msg(timeout=1)
                except queue.Empty:
                    reply = {}
                if reply.get("msg_type") == "kernel_info_reply":
                    progress.ready()
                    return
                if not await km.is_alive():
                    progress.failed("the kernel exited before it answered; see its log")
                    return
                if time.monotonic() > deadline:
                    progress.failed(f"the kernel did not answer within {READY_TIMEOUT:g} s; see its log")
                    return
        except Exception:  # noqa: BLE001 - the kernel's start is not this watcher's to fail
            progress.log.exception("CondaTainer kernel %s: watching for its first reply failed", progress.kernel_id)
        finally:
            client.stop_channels()

    def shell_argv(self) -> list[str]:
        """A shell in the kernel's own instance with the kernel's environment ("Open terminal"):
        its env file, its working directory, the stack's envs activated as its launcher does
        (:mod:`kernel_provider.incontainer.shell`). :class:`ValueError` when the kernel is not running."""
        if self.instance is None or self._env_file is None or self.process is None:
            raise ValueError("the kernel is not running; start it, then open its terminal")
        if self.instance.oci:
            raise ValueError("an OCI-mode kernel has no instance to open a terminal in; use a native-mode kernel")
        shell = [self.container_python, SHELL]
        return command.instance_exec_argv(
            self.manager.apptainer, self.instance.name, str(self._env_file), shell, self.cwd or ""
        )

    @abstractmethod
    async def _spawn(self, exec_argv: list[str]) -> asyncio.subprocess.Process:
        """Start the kernel's ``apptainer exec`` where the instance runs."""

    async def _connection_info_once_started(self) -> KernelConnectionInfo:
        """What ``launch_kernel`` returns: the connection info ``pre_launch`` wrote."""
        return self.connection_info

    # --- a start that failed ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _undone_on_failure(self) -> AsyncIterator[None]:
        """A failed start leaves nothing behind and tells the user why (see :class:`KernelStartError`)."""
        try:
            yield
        except BaseException as err:
            self.progress.failed(str(err) or type(err).__name__)
            try:
                await self._abandon_start()
            except Exception:  # noqa: BLE001 - the start's own error is what the user needs
                self.log.exception("CondaTainer kernel %s: cleaning up after a failed start failed", self.kernel_id)
            if isinstance(err, Exception):
                label = self.kernel_spec.display_name if self.kernel_spec else self.kernel_id
                raise KernelStartError(f"The kernel {label!r} could not start: {_continued(str(err))}") from err
            raise

    async def _abandon_start(self) -> None:
        """Remove what the start made: the kernel's process, the instance (or SLURM job), the
        kernel's env file, the connection file (it holds the kernel's key) and its ipc sockets,
        and jupyter_client's record of the start."""
        if self.process is not None and self.process.returncode is None:
            await self.kill()
        await self.cleanup(restart=False)
        if self.parent is not None:
            self.parent.cleanup_connection_file()
            self.parent.cleanup_ipc_files()
        self._forget_pending_start()

    def _forget_pending_start(self) -> None:
        """jupyter_client 8 keeps a failed first start among the MultiKernelManager's pending
        kernels; jupyter_server's ``shutdown_all`` then fails on that id ("Kernel does not exist")
        before it stops the event loop, and the server hangs on SIGTERM. Drop the entry (a
        failed restart has none: its kernel is a known one). jupyter_client offers no public
        way to do this."""
        multi = getattr(self.parent, "parent", None)
        pending = getattr(multi, "_pending_kernels", None)
        if isinstance(pending, dict) and self.kernel_id not in multi:
            pending.pop(self.kernel_id, None)

    # --- the running kernel ----------------------------------------------------------------------

    @property
    def has_process(self) -> bool:
        """``KernelManager.has_kernel``: True from ``launch_kernel`` until ``wait`` saw the end."""
        return self.process is not None

    async def poll(self) -> int | None:
        """``KernelManager.is_alive``: None while the kernel's process runs, else its exit code."""
        return self.process.returncode if self.process else 0

    async def wait(self) -> int | None:
        """``KernelManager.finish_shutdown`` and ``kill_kernel``: wait for the kernel's process
        to end; returns its exit code."""
        if not self.process:
            return 0
        returncode = await self.process.wait()
        self.process = None
        return returncode

    async def shutdown_requested(self, restart: bool = False) -> None:
        """Called by ``KernelManager`` right after it sent the kernel a ``shutdown_request``: wait
        (at most ``SHUTDOWN_WATCH`` seconds) for the kernel to end. KernelManager looks only every
        0.1 s, a pause longer than a forked kernel's whole exit, in every restart and shutdown."""
        await super().shutdown_requested(restart=restart)
        if self.process is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.process.wait(), SHUTDOWN_WATCH)

    async def kill(self, restart: bool = False) -> None:
        """``KernelManager.kill_kernel`` (also before a restart): SIGKILL through ``send_signal``."""
        await self.send_signal(signal.SIGKILL)

    async def terminate(self, restart: bool = False) -> None:
        """``KernelManager.finish_shutdown`` when the kernel ignored the shutdown request:
        SIGTERM through ``send_signal``."""
        await self.send_signal(signal.SIGTERM)

    async def cleanup(self, restart: bool = False) -> None:
        """``KernelManager.cleanup_resources``, after the kernel's process ended: removes its env
        file; a shutdown (``restart`` False) also releases the instance, which a restart keeps."""
        await super().cleanup(restart=restart)
        if self._ready_watch is not None:
            self._ready_watch.cancel()
            self._ready_watch = None
        if self._stack_record is not None:  # a start that failed before the kernel took its record
            self._stack_record.cancel()
            self._stack_record = None
        for path in (self._env_file, self._record_file):
            if path is not None:
                path.unlink(missing_ok=True)
        self._env_file = self._record_file = None
        if not restart:
            kernellog.forget(self.kernel_id, keep=self._progress is not None and self._progress.has_failed)
            await asyncio.to_thread(persistence.remove, self.manager.config, self.kernel_id)
            await self._release()

    @abstractmethod
    async def _release(self) -> None:
        """Give up the instance (the SLURM job): at shutdown, or after a failed start. Idempotent."""

    # --- persistence -----------------------------------------------------------------------------

    async def get_provisioner_info(self) -> dict[str, Any]:
        """Called by a ``KernelManager`` that persists its kernels (jupyter_server does not):
        the base classes' record (kernel id, connection info; the local provisioner's also pid,
        pgid and ip) and the kernel's :class:`Placement`. ``load_provisioner_info`` restores it."""
        info = await super().get_provisioner_info()
        info["placement"] = asdict(self.placement)
        return info

    async def load_provisioner_info(self, provisioner_info: dict) -> None:
        """The inverse of ``get_provisioner_info``, for a ``KernelManager`` that reloads a
        persisted kernel: restores the base classes' record and the kernel's :class:`Placement`."""
        await super().load_provisioner_info(provisioner_info)
        self.placement = Placement(**provisioner_info["placement"])

    async def _save_record(self) -> None:
        """Write what a next server needs to adopt this kernel (:mod:`kernel_provider.kernel.persistence`)."""
        pid = self.process.pid
        record = persistence.KernelRecord(
            kernel_id=self.kernel_id,
            kernel_name=getattr(self.parent, "kernel_name", "") or "",
            cwd=self.cwd or os.getcwd(),
            owner=Owner.current(),
            pid=pid,
            pid_start=process_start_time(pid) or 0,
            provisioner_info=await self.get_provisioner_info(),
        )
        await asyncio.to_thread(persistence.save, self.manager.config, record)

    async def adopt(self, record: persistence.KernelRecord) -> bool:
        """Take over a kernel a server that is gone started (``persist_kernels``): its process,
        its instance (or job), its record, now signed by this server. False, and nothing taken,
        when its process or its instance (job) has ended: such a kernel is cleaned, never adopted."""
        await self.load_provisioner_info(record.provisioner_info)
        self.cwd = record.cwd
        if not record.process_alive() or not await self._resume():
            return False
        self.process = persistence.AdoptedProcess(record)
        kernellog.track(self.kernel_id, self.log_sources())  # its output file is where its first server put it
        await self._save_record()
        return True

    @abstractmethod
    async def _resume(self) -> bool:
        """Take over the running instance (job) of :attr:`placement`; False when it is gone."""
