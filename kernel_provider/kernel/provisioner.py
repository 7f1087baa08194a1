"""The ``condatainer-provisioner``: the kernel's instance runs on the server's host.

- ``pre_launch``: ipc sockets in the user-only runtime directory (unless ``transport`` is
  tcp), jupyter_client's connection file and argv (LocalProvisioner), then the stack's
  instance: started (binding the connection file's directory), or joined when
  ``share_instance``. A restart keeps the instance.
- ``launch_kernel``: a fork of the instance's fork server (:mod:`kernel_provider.host.zygote`),
  or, when there is none or it refuses (the reason is logged), ``apptainer exec`` of the argv;
  it returns once the kernel listens on all its channels.
- ``send_signal``: SIGINT goes to the kernel's own host PID (signalling the ``apptainer``
  process would kill the kernel); other signals to the process group.
- ``cleanup``: a shutdown releases the instance: it stays warm for the next kernel of its
  stack (``warm_timeout``, ``warm_limit``) or stops in the background.

The instance logic both launchers share is in :mod:`kernel_provider.kernel.provisioner_base`.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from jupyter_client.provisioning import LocalProvisioner
from traitlets import Bool, Enum, Float, Int

from kernel_provider.host import oci
from kernel_provider.host.instances import WarmPolicy
from kernel_provider.host.process import apptainer_env
from kernel_provider.host.runtime import runtime_dir
from kernel_provider.host.zygote import ForkedKernel, ZygoteError, fork_problem
from kernel_provider.incontainer.constants import LAUNCHER
from kernel_provider.incontainer.proctree import descendants
from kernel_provider.kernel import kernellog, oci_mode, prewarm
from kernel_provider.kernel.provisioner_base import (
    IPYKERNEL_MODULE,
    CondaTainerProvisionerBase,
    Placement,
    launcher_argv,
    stack_label,
)

IPC_PATH_LIMIT = 108  # sun_path of a unix socket, including the final NUL
CHANNELS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
LISTEN_TIMEOUT = 30.0  # then the clients' own retries take over
LISTEN_POLL = 0.005
TCP_LISTEN = "0A"  # the state column of /proc/net/tcp


def listening_ports(tables: tuple[str, ...] = ("/proc/net/tcp", "/proc/net/tcp6")) -> set[int]:
    """The local TCP ports in LISTEN state in this network namespace (the kernels' too: instances
    share the host's network)."""
    ports = set()
    for table in tables:
        try:
            with open(table) as handle:
                next(handle, None)
                for line in handle:
                    fields = line.split()
                    if len(fields) > 3 and fields[3] == TCP_LISTEN:
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        except OSError:
            continue
    return ports


def channels_listening(info: dict[str, Any]) -> bool:
    """Whether a kernel has bound every channel of its connection info: for ipc, each channel's
    socket file (``IP-PORT``); for tcp, each port in LISTEN state."""
    ports = [info[name] for name in CHANNELS if info.get(name)]
    if info.get("transport") == "ipc":
        return all(os.path.exists(f"{info['ip']}-{port}") for port in ports)
    return set(ports) <= listening_ports()


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


class CondaTainerProvisioner(CondaTainerProvisionerBase, LocalProvisioner):
    """A kernel in an Apptainer instance on the server's host.

    LocalProvisioner gives the connection file, ports and argv (``pre_launch``), the port
    cache's cleanup and the pid/pgid/ip of ``get_provisioner_info``.
    """

    share_instance = Bool(
        True,
        config=True,
        help="""Kernels with the same stack share one instance and its fork server, so each next
        kernel is a fork that shares the preloaded modules' memory; the instance stays until its
        last kernel ends. False: an instance per kernel (a writable env then takes one kernel at a time).""",
    )
    oci = Bool(
        False,
        config=True,
        help="""Run the kernel in SingularityCE's OCI mode. '--oci' among apptainer_flags,
        c.CondaTainerConfig.oci, and SingularityCE's own 'oci mode = yes' or SINGULARITY_OCI=true
        do the same; '--no-oci' among the flags turns it off. OCI mode has no instances: the
        kernel is a container of its own, reached through ipc sockets only (its network namespace
        is its own), interrupted by message, stopped by SIGKILL.""",
    )
    transport = Enum(
        ["ipc", "tcp"],
        "ipc",
        config=True,
        help="""ZMQ transport. 'ipc' (default): sockets in the user-only runtime directory, so no
        kernel port is open to other users of a shared login node. 'tcp': localhost ports.""",
    )
    fork_server = Bool(
        True,
        config=True,
        help="""Start kernels as forks of a fork server in the instance, which has ipykernel imported
        already (about twice as fast). False: every kernel is an 'apptainer exec' of its argv.""",
    )
    warm_timeout = Float(
        600.0,
        config=True,
        help="""Seconds an instance stays running after its last kernel shut down, so that the next
        kernel of the same stack starts as a fork at once. 0: it stops with its last kernel.
        Stacks that mount a writable env never stay warm: the env would stay locked against
        other containers (the CondaTainer CLI's too).""",
    )
    warm_limit = Int(
        2,
        config=True,
        help="At most this many warm instances (stacks) at a time; the oldest stops first. 0: none.",
    )
    forked = False  # whether the running kernel is a fork of the fork server

    def _use_ipc(self) -> None:
        """Point the KernelManager at ipc sockets under the bound runtime directory."""
        km = self.parent
        if km is None or self.transport != "ipc":
            return
        prefix = str(runtime_dir() / f"k-{self.kernel_id[:8]}")
        if len(prefix.encode()) + len("-65535") >= IPC_PATH_LIMIT:
            self.log.warning(
                "CondaTainer kernel %s: runtime directory too long for ipc sockets (%s); using tcp",
                self.kernel_id,
                prefix,
            )
            return
        km.transport = "ipc"
        km.cache_ports = False
        km.ip = prefix

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """Called by ``KernelManager.pre_start_kernel`` before every start and restart.

        Writes the connection file (LocalProvisioner), gets the stack's instance on the first
        start and makes sure its Python has ipykernel. Returns ``launch_kernel``'s kwargs: ``cmd``
        (the kernelspec's argv for the container's Python) and ``env``.
        """
        async with self._undone_on_failure():
            if self.instance is None:
                self._use_ipc()
            kwargs = await super().pre_launch(**kwargs)
            if self.instance is None:
                notebook = kwargs.get("env", {}).get("JPY_SESSION_NAME", "")
                await self._acquire_instance(str(kwargs.get("cwd") or os.getcwd()), notebook)
            await self._ensure_ipykernel(self.manager.probe_python(self.instance))
            return self._in_container(kwargs)

    async def _acquire_instance(self, kernel_cwd: str, notebook: str = "") -> None:
        """Start the stack's instance, take a warm one, or join the running one when
        ``share_instance``; the first kernel of this server cleans up after a crashed one.
        ``notebook`` names the kernel's user. In OCI mode there is no instance to start (see
        :func:`kernel_provider.kernel.oci_mode.check`)."""
        manager = self.manager
        self.progress.step("stack", f"reading the stack ({', '.join(self.overlays) or 'no overlays'})")
        await manager.sweep_orphans_once()
        plan = await asyncio.to_thread(self._plan, self._visible_dir(kernel_cwd))
        transport = self.parent.transport if self.parent is not None else self.transport
        use_oci = oci_mode.check(await manager.runtime(), plan.flags, self.oci or manager.config.oci, transport)
        how = "starting or joining the shared instance" if self.share_instance and not use_oci else "starting instance"
        self._begin_stack_record(plan)  # made while the instance starts
        self.progress.step("instance", f"{how}, mounting {stack_label(plan)}")
        self.instance = await manager.acquire(
            plan, self.kernel_id, self.share_instance, notebook, oci=use_oci, fork_python=self._fork_python()
        )
        await asyncio.to_thread(prewarm.note, manager.config, getattr(self.parent, "kernel_name", "") or "")
        self.placement = Placement(instance=self.instance.name)

    def _fork_python(self) -> str:
        """The Python a new instance's fork server runs (the kernelspec's), or '' when this
        kernel will not be a fork (no fork server, a kernelspec that sets env or runs no ipykernel)."""
        spec = self.kernel_spec
        if not self.fork_server or spec is None or spec.env:
            return ""
        argv = launcher_argv(list(spec.argv))
        return argv[0] if len(argv) > 1 and argv[1] == LAUNCHER else ""

    def _visible_dir(self, kernel_cwd: str) -> str:
        """What to bind for the kernel's cwd: the server's root directory when the cwd is under it,
        so that one instance (warm, or shared) serves the notebooks of every directory below."""
        root = getattr(getattr(self.parent, "parent", None), "root_dir", "")
        if root and os.path.commonpath([os.path.abspath(root), os.path.abspath(kernel_cwd)]) == os.path.abspath(root):
            return os.path.abspath(root)
        return kernel_cwd

    async def _start_kernel_process(self, cmd: list[str], kwargs: dict[str, Any], env_file: Path) -> Any:
        """A fork of the instance's fork server; ``apptainer exec`` (the base class) when that
        cannot be, with the reason in the log."""
        self.forked = False
        if self.fork_server and not self.instance.oci:  # OCI mode: no instance to hold a fork server
            try:
                forked, reason = await self._fork(cmd, kwargs)
            except ZygoteError as err:
                forked, reason = None, str(err)
            if forked is not None:
                self.forked = True
                return forked
            self.log.info("CondaTainer kernel %s starts by apptainer exec, not forked: %s", self.kernel_id, reason)
        return await super()._start_kernel_process(cmd, kwargs, env_file)

    async def _fork(self, cmd: list[str], kwargs: dict[str, Any]) -> tuple[ForkedKernel | None, str]:
        """The forked kernel, or None and why not."""
        instance = self.instance
        first = instance.zygote is None and not instance.zygote_error
        zygote = await self.manager.zygote(instance, cmd[0], wait=first)
        if zygote is None:
            return None, instance.zygote_error or "the instance's fork server is not running (a new one is starting)"
        if self.kernel_spec and self.kernel_spec.env:
            return None, "the kernelspec sets env, which the conda activation must see as the kernel starts"
        common = dict(instance.fork_server_env())
        extra = {k: v for k, v in self._kernel_env(kwargs.get("env", {})) if common.get(k) != v}
        if problem := fork_problem(zygote.python, cmd, extra, LAUNCHER):
            return None, problem
        try:
            with kernellog.open_kernel_log(self.kernel_id):  # made here, the fork appends
                log = str(kernellog.kernel_log_path(self.kernel_id))
            forked = await zygote.fork(cmd[2:], extra, self.cwd, log)
        except ZygoteError:
            await self.manager.zygote(instance, cmd[0], wait=False, renew=True)  # for the next kernel
            raise
        self.pid = self.pgid = forked.pid
        return forked, ""

    async def _connection_info_once_started(self) -> dict[str, Any]:
        """The connection info once the kernel listens on every channel, it ended, or
        LISTEN_TIMEOUT passed. A client that connects earlier waits ZMQ's reconnect interval
        (0.1 s): longer than a forked kernel's whole start, and the first client is the server's
        own ``kernel_info``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LISTEN_TIMEOUT
        info = self.connection_info
        while self.process.returncode is None and loop.time() < deadline:
            if await asyncio.to_thread(channels_listening, info):  # /proc/net/tcp is long on a busy host
                break
            await asyncio.sleep(LISTEN_POLL)
        return info

    async def _spawn(self, exec_argv: list[str]) -> asyncio.subprocess.Process:
        """The exec as a child of the server, in its own session (signals go to its group), its
        output into the kernel's log file."""
        process = await asyncio.create_subprocess_exec(
            *exec_argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self.kernel_output,
            stderr=asyncio.subprocess.STDOUT if self.kernel_output else None,
            env=apptainer_env(exec_argv[0]),
            start_new_session=True,
        )
        self.pid = self.pgid = process.pid
        return process

    async def send_signal(self, signum: int) -> None:
        """``KernelManager.signal_kernel`` (and ``kill``/``terminate`` here): SIGINT to the
        kernel's own host PID, other signals to the exec's process group."""
        if not self.process or self.process.returncode is not None:
            return
        if isinstance(self.process, ForkedKernel):
            self.process.send_signal(signum)
            return
        if self.instance is not None and self.instance.oci and signum in (signal.SIGTERM, signal.SIGKILL):
            # PID 1 of its namespace ignores SIGTERM: any stop is SIGKILL to the container's init.
            if await asyncio.to_thread(oci.kill_container, self.process.pid):
                return
            signum = signal.SIGKILL
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

    async def _resume(self) -> bool:
        """An adopted kernel's instance: still running, so this server's manager takes it over."""
        manager = self.manager
        record = manager.store.read(self.placement.instance)
        if record is None or record.name not in await manager.running_names():
            return False
        plan = await asyncio.to_thread(self._plan, self.cwd or os.getcwd())
        self.instance = await manager.adopt(record.name, plan, self.kernel_id, self.share_instance)
        return True

    async def _release(self) -> None:
        """Leave the instance; it stops when no kernel uses it any more."""
        instance, self.instance = self.instance, None
        self.placement = Placement()
        if instance is not None:
            await self.manager.release(instance, self.kernel_id, WarmPolicy(self.warm_timeout, self.warm_limit))
