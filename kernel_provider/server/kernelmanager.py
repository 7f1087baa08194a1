"""jupyter_server's kernel manager with what CondaTainer's kernels need at their edges.

``c.ServerApp.kernel_manager_class = "kernel_provider.server.kernelmanager.CondaTainerKernelManager"``
(our ``jupyter_server_config.d`` file sets it). It is jupyter_server's
``AsyncMappingKernelManager`` plus what jupyter_server gives no hook for:

- **A shutdown while a SLURM job waits in the queue** cancels the start, and with it the
  job, at once: jupyter_client would otherwise wait for the start to finish (up to the
  launch timeout) before it shuts the kernel down. A shutdown during a restart (a SLURM
  kernel's takes seconds when its job ended) waits for the restart: jupyter_client fails
  on it otherwise ("Exception is not set"), and the server then hangs as it stops.
- **The kernel model says more**: ``GET /api/kernels/ID`` carries the kernel's notice
  (a SLURM kernel's job, node, end time, time left) under ``condatainer``.
- **Culling that tells.** A kernel the idle culler shut down gets a ``culled`` notice
  (:mod:`kernel_provider.kernel.notices`: REST API and event bus), so the notebook can
  say why its kernel is gone when its user comes back. The shutdown itself is the
  ordinary one: a SLURM kernel's job is cancelled with it.
- **Kernels that survive their server** (``persist_kernels``, opt-in): at start the server
  adopts the CondaTainer kernels of a server of this user that is gone, under the same
  kernel ids (:mod:`kernel_provider.kernel.persistence`), so an open notebook reconnects to
  its kernel with its variables. With ``c.SessionManager.database_filepath`` on disk the
  notebooks' sessions survive too. On a clean stop the server leaves them running as well.

Without this class the rest works (walltime, queue reports, culling with its job); a
culled kernel is then only logged, and a queued start runs to its end or its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from jupyter_client.provisioning import KernelProvisionerFactory
from jupyter_server._tz import utcnow
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from traitlets import Bool

from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.kernel import notices, persistence
from kernel_provider.kernel.provisioner_base import CondaTainerProvisionerBase
from kernel_provider.kernel.slurm_provisioner import cancel_start


class CondaTainerKernelManager(AsyncMappingKernelManager):
    """``AsyncMappingKernelManager`` that cancels queued SLURM starts at a shutdown, records culls,
    and with ``persist_kernels`` keeps CondaTainer kernels across server restarts."""

    persist_kernels = Bool(
        False,
        config=True,
        help="""Keep CondaTainer kernels (local instances and SLURM jobs) running when the server
        stops or is killed, and adopt them under the same kernel ids at the next start of a server
        of this user; set c.SessionManager.database_filepath to a file so the notebooks' sessions
        are kept too. A kernel whose process died meanwhile is cleaned up, never adopted. Off: the
        server shuts its kernels down, and the next start sweeps what a killed server left.""",
    )

    async def _async_shutdown_kernel(self, kernel_id, now=False, restart=False):
        """A kernel whose job waits in the queue: cancel the start (the job goes at once) and let
        the start's request answer with that; any other kernel: jupyter_server's shutdown."""
        if not restart and cancel_start(kernel_id):
            self.log.info("CondaTainer kernel %s: shut down while its job waits; cancelling the job", kernel_id)
            if kernel_id not in self._kernels:  # not yet known: the start fails and cleans up itself
                starting = self._pending_kernels.get(kernel_id)
                if starting is not None:
                    await asyncio.shield(starting)
                return
        kernel = self._kernels.get(kernel_id)
        if not restart and kernel is not None and not kernel.ready.done():
            ready = kernel.ready if isinstance(kernel.ready, asyncio.Future) else asyncio.wrap_future(kernel.ready)
            with contextlib.suppress(Exception):
                await asyncio.shield(ready)
        await super()._async_shutdown_kernel(kernel_id, now=now, restart=restart)

    shutdown_kernel = _async_shutdown_kernel

    def kernel_model(self, kernel_id):
        """jupyter_server's kernel model (``GET /api/kernels/ID``), with the kernel's notice under
        ``condatainer`` when it has one: a SLURM kernel's job, node, end time and time left."""
        model = super().kernel_model(kernel_id)
        notice = notices.board.get(kernel_id)
        if notice is not None:
            model["condatainer"] = notice.to_json()
        return model

    async def _async_restart_kernel(self, kernel_id, now=False):
        """jupyter_server's restart, with the reason of a failure in the log (its REST API says
        only "Exception restarting kernel")."""
        try:
            return await super()._async_restart_kernel(kernel_id, now=now)
        except Exception:
            self.log.exception("Kernel %s: the restart failed", kernel_id)
            raise

    restart_kernel = _async_restart_kernel

    async def cull_kernel_if_idle(self, kernel_id):
        """jupyter_server's culling; a kernel it shut down for idleness gets a ``culled`` notice."""
        kernel = self._kernels.get(kernel_id)
        if kernel is None or getattr(kernel, "execution_state", None) == "dead" or not hasattr(kernel, "last_activity"):
            await super().cull_kernel_if_idle(kernel_id)
            return
        idle = (utcnow() - kernel.last_activity).total_seconds()
        notice = notices.board.get(kernel_id)
        job = notice.job_id if notice else ""
        await super().cull_kernel_if_idle(kernel_id)
        if kernel_id in self._kernels:
            return
        message = f"The kernel was shut down after {notices.format_duration(idle)} without activity (idle culling)" + (
            f"; its SLURM job {job} was cancelled" if job else ""
        )
        self.log.info("CondaTainer kernel %s: %s", kernel_id, message)
        notices.board.update(kernel_id, notices.CULLED, job_id=job, ended=notices.CULLED, message=message)

    # --- persist_kernels ------------------------------------------------------------------------

    async def adopt_kernels(self) -> list[str]:
        """At server start (``persist_kernels``): adopt the kernels of servers that are gone; forget
        those whose process has ended (the orphan sweep then stops their instances and jobs)."""
        config = CondaTainerConfig(parent=self.parent)
        adopted = []
        for record in await asyncio.to_thread(persistence.orphans, config):
            kept = False
            if record.kernel_id not in self:
                try:
                    kept = await self._adopt(record)
                except Exception:  # noqa: BLE001 - one kernel that cannot be adopted must not stop the server
                    self.log.exception("CondaTainer kernel %s could not be adopted", record.kernel_id)
            if kept:
                adopted.append(record.kernel_id)
                self.log.info("CondaTainer kernel %s (%s): adopted", record.kernel_id, record.kernel_name)
            else:
                await asyncio.to_thread(persistence.remove, config, record.kernel_id)
                self.log.info("CondaTainer kernel %s: its process has ended; cleaned up", record.kernel_id)
        return adopted

    async def _adopt(self, record: persistence.KernelRecord) -> bool:
        """Register a running kernel under its id, as a start would have: its KernelManager with
        the connection file it had, its provisioner taking over process and instance (job)."""
        kernel_id = record.kernel_id
        km = self.kernel_manager_factory(
            connection_file=os.path.join(self.connection_dir, f"kernel-{kernel_id}.json"),
            parent=self,
            log=self.log,
            kernel_name=record.kernel_name,
            kernel_spec_manager=self.kernel_spec_manager,
        )
        km.kernel_id = kernel_id
        try:
            await asyncio.to_thread(km.load_connection_file)
        except (OSError, ValueError):
            return False  # the connection file is gone: no client could reach the kernel
        provisioner = KernelProvisionerFactory.instance(parent=self.parent).create_provisioner_instance(
            kernel_id, km.kernel_spec, parent=km
        )
        if not isinstance(provisioner, CondaTainerProvisionerBase) or not await provisioner.adopt(record):
            return False
        km.provisioner = provisioner
        km._launch_args = {"env": os.environ.copy(), "cwd": record.cwd}  # what a restart launches with
        km._connect_control_socket()  # as post_start_kernel does: shutdown and restart requests go there
        km._attempted_start = True  # as after start_kernel: the next restart or shutdown makes a new ready future
        km.ready.set_result(None)
        self._kernels[kernel_id] = km
        self._kernel_connections[kernel_id] = 0
        km.execution_state = "idle"
        km.reason = ""
        km.last_activity = utcnow()
        await self._finish_kernel_start(kernel_id)
        km.start_restarter()
        if not self._initialized_culler:
            self.initialize_culler()
        return True

    async def _async_shutdown_all(self, now=False):
        """The server stops: with ``persist_kernels`` our kernels stay running for the next server
        (only this server lets go of them); other kernels shut down as usual."""
        if self.persist_kernels:
            for kernel_id in list(self._kernels):
                km = self._kernels[kernel_id]
                if isinstance(getattr(km, "provisioner", None), CondaTainerProvisionerBase):
                    km.stop_restarter()
                    self.stop_watching_activity(kernel_id)
                    self._kernels.pop(kernel_id)
                    self.log.info("CondaTainer kernel %s: left running for the next server", kernel_id)
        await super()._async_shutdown_all(now=now)

    shutdown_all = _async_shutdown_all
