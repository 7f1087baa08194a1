"""The jupyter_server extension: REST API for overlays and jobs, plus housekeeping.

At start it syncs the kernelspecs with the image directories (so a user sees the
stacks that exist), stops instances left behind by a crashed server and, where SLURM's
clients are on PATH, cancels the SLURM kernel jobs such a server left. Job progress
goes out on jupyter_server's event bus (schema ``JOB_EVENT``).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Integer, default

from kernel_provider.envs.jobs import Job, JobRegistry
from kernel_provider.envs.operations import EnvOperations
from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.host.instances import InstanceManager
from kernel_provider.host.process import InstanceError
from kernel_provider.kernel import slurm
from kernel_provider.kernel.kernelspecs import KernelspecStore
from kernel_provider.model.overlays import scan
from kernel_provider.server.handlers import ROUTES

JOB_EVENT = "https://events.jupyter.org/jupyter_condatainer/job/v1"
JOB_SCHEMA = Path(__file__).parent / "events" / "job.yaml"


class CondaTainerExtension(ExtensionApp):
    """Puts the REST API and the job registry in the server, and cleans up after a crashed server at start."""

    name = "kernel_provider"

    sync_kernelspecs = Bool(
        True, config=True, help="Write/refresh our kernelspecs from the image directories when the server starts."
    )
    sweep_orphans = Bool(
        True, config=True, help="Stop instances left by a crashed server (ours only) when the server starts."
    )
    job_concurrency = Integer(
        config=True,
        min=1,
        help="""How many overlay jobs (create, install, remove, rollback, freeze) run at once; more
        wait as 'queued' in the order they came. Default: the number of CPUs.""",
    )

    @default("job_concurrency")
    def _default_job_concurrency(self) -> int:
        return os.cpu_count() or 1

    @property
    def condatainer(self) -> CondaTainerConfig:
        """CondaTainer's configuration as this server sets it (``c.CondaTainerConfig``, else ``CNT_*``)."""
        return CondaTainerConfig(parent=self.serverapp)

    def initialize_settings(self) -> None:
        """Give the handlers one set of env operations and one job registry; sync the kernelspecs if asked."""
        config = self.condatainer
        self.serverapp.event_logger.register_event_schema(JOB_SCHEMA)
        self.jobs = JobRegistry(on_change=self._emit, concurrency=self.job_concurrency)
        self.settings.update(
            condatainer_operations=EnvOperations(config, InstanceManager.for_config(config)),
            condatainer_jobs=self.jobs,
        )
        if self.sync_kernelspecs:
            result = KernelspecStore().sync(scan(config.image_dirs, config.distro))
            self.log.info("CondaTainer kernelspecs: %d written, %d removed", len(result.written), len(result.removed))

    def initialize_handlers(self) -> None:
        """Mount the REST API (:data:`~kernel_provider.server.handlers.ROUTES`)."""
        self.handlers.extend(ROUTES)

    def _emit(self, job: Job) -> None:
        self.serverapp.event_logger.emit(schema_id=JOB_EVENT, data=job.to_json(log=False))

    async def _start_jupyter_server_extension(self, serverapp) -> None:
        InstanceManager.for_config(self.condatainer).serve()  # stop_extension stops what it owns
        if not self.sweep_orphans:
            return
        operations: EnvOperations = self.settings["condatainer_operations"]
        recovery = await asyncio.to_thread(operations.recover)
        for path in recovery.removed:
            self.log.info("CondaTainer recovery: removed the unfinished work file %s", path)
        for outcome in recovery.outcomes:
            self.log.warning("CondaTainer recovery: %s", outcome)
            self.jobs.record("recover", "", outcome)
        await self._sweep_slurm_jobs()
        try:
            swept = await InstanceManager.for_config(self.condatainer).sweep_orphans()
        except InstanceError as err:
            self.log.warning("CondaTainer orphan sweep failed: %s", err)
            return
        if swept:
            self.log.info("CondaTainer: stopped %d orphaned instance(s): %s", len(swept), ", ".join(swept))

    async def _sweep_slurm_jobs(self) -> None:
        """Cancel the SLURM kernel jobs of a crashed server (ours by name and state file only)."""
        if not slurm.available():
            return
        try:
            cancelled = await slurm.sweep_orphans(slurm.state_store(self.condatainer), self.log)
        except (slurm.SlurmError, OSError, asyncio.TimeoutError) as err:
            self.log.warning("CondaTainer SLURM orphan sweep failed: %s", err)
            return
        if cancelled:
            self.log.info("CondaTainer: cancelled %d orphaned SLURM job(s): %s", len(cancelled), ", ".join(cancelled))

    async def stop_extension(self) -> None:
        """Cancel every job as the server stops; what a job leaves, the next start's recovery removes.
        Stop the warm instances and wait for the stops running in the background."""
        await self.jobs.shutdown()
        await InstanceManager.for_config(self.condatainer).close()
