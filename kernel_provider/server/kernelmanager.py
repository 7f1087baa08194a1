"""jupyter_server's kernel manager with what CondaTainer's kernels need at their edges.

``c.ServerApp.kernel_manager_class = "kernel_provider.server.kernelmanager.CondaTainerKernelManager"``
(our ``jupyter_server_config.d`` file sets it). It is jupyter_server's
``AsyncMappingKernelManager`` plus two things jupyter_server gives no hook for:

- **A shutdown while a SLURM job waits in the queue** cancels the start, and with it the
  job, at once: jupyter_client would otherwise wait for the start to finish (up to the
  launch timeout) before it shuts the kernel down.
- **Culling that tells.** A kernel the idle culler shut down gets a ``culled`` notice
  (:mod:`kernel_provider.kernel.notices`: REST API and event bus), so the notebook can
  say why its kernel is gone when its user comes back. The shutdown itself is the
  ordinary one: a SLURM kernel's job is cancelled with it.

Without this class everything else works; a culled kernel is then only logged.
"""

from __future__ import annotations

import asyncio

from jupyter_server._tz import utcnow
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager

from kernel_provider.kernel import notices
from kernel_provider.kernel.slurm_provisioner import cancel_start


class CondaTainerKernelManager(AsyncMappingKernelManager):
    """``AsyncMappingKernelManager`` that cancels queued SLURM starts at a shutdown and records culls."""

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
        await super()._async_shutdown_kernel(kernel_id, now=now, restart=restart)

    shutdown_kernel = _async_shutdown_kernel

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
