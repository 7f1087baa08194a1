"""The jupyter_server extension: REST API for overlays and jobs, plus housekeeping.

At start it syncs the kernelspecs with the image directories (so a user sees the
stacks that exist), stops instances left behind by a crashed server, removes the env
files of its stack terminals and, where SLURM's clients are on PATH, cancels the SLURM
kernel jobs such a server left. Job progress
goes out on jupyter_server's event bus (schema ``JOB_EVENT``), and so do the steps of
every CondaTainer kernel's start (:mod:`kernel_provider.server.progress`) and the kernels'
notices: queue, time limit, culling (schema ``KERNEL_EVENT``, :mod:`kernel_provider.kernel.notices`).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Integer, List, Unicode, default

from kernel_provider.envs.jobs import Job, JobRegistry
from kernel_provider.envs.operations import EnvOperations
from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.host.instances import InstanceManager
from kernel_provider.host.process import InstanceError
from kernel_provider.host.runtime import runtime_dir
from kernel_provider.kernel import notices, persistence, prewarm, slurm, slurm_provisioner, stackshell
from kernel_provider.kernel.kernelspecs import KernelspecStore
from kernel_provider.model.overlays import scan
from kernel_provider.server import disk, progress, runtime_handler, stack, terminal
from kernel_provider.server.handlers import ROUTES
from kernel_provider.server.kernel_handlers import KERNEL_ROUTES
from kernel_provider.server.kernelmanager import CondaTainerKernelManager

JOB_EVENT = "https://events.jupyter.org/jupyter_condatainer/job/v1"
JOB_SCHEMA = Path(__file__).parent / "events" / "job.yaml"
KERNEL_EVENT = "https://events.jupyter.org/jupyter_condatainer/kernel/v1"
KERNEL_SCHEMA = Path(__file__).parent / "events" / "kernel.yaml"


class CondaTainerExtension(ExtensionApp):
    """Puts the REST API and the job registry in the server, and cleans up after a crashed server at start."""

    name = "kernel_provider"

    sync_kernelspecs = Bool(
        True, config=True, help="Write/refresh our kernelspecs from the image directories when the server starts."
    )
    sweep_orphans = Bool(
        True,
        config=True,
        help="Stop instances, and remove stack terminals' env files, left by a crashed server (ours only) "
        "when the server starts.",
    )
    job_concurrency = Integer(
        config=True,
        min=1,
        help="""How many overlay jobs (create, install, remove, rollback, freeze) run at once; more
        wait as 'queued' in the order they came. Default: the number of CPUs.""",
    )

    prewarm = List(
        Unicode(),
        config=True,
        help="""Kernelspec names (e.g. 'condatainer-python-3.11') whose stacks start warm when the
        server starts, so that the first notebook on them gets a fork of a running fork server.""",
    )
    prewarm_recent = Integer(
        1,
        config=True,
        min=0,
        help="""Also start warm the stacks of this many kernelspecs whose kernels started most
        recently (recorded in the state directory). 0: only the 'prewarm' ones.""",
    )

    _prewarming: asyncio.Task | None = None

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
        progress.install(self.serverapp.event_logger)
        kernel_terminals = terminal.Terminals(self.serverapp.web_app.settings)
        kernel_terminals.install(self.serverapp.event_logger)
        self.serverapp.event_logger.register_event_schema(KERNEL_SCHEMA)
        notices.board.listeners.append(self._emit_notice)
        self.jobs = JobRegistry(on_change=self._emit, concurrency=self.job_concurrency)
        self.settings.update(
            condatainer_operations=EnvOperations(config, InstanceManager.for_config(config)),
            condatainer_jobs=self.jobs,
            condatainer_terminals=kernel_terminals,
        )
        if self.sync_kernelspecs:
            result = KernelspecStore().sync(scan(config.image_dirs, config.distro))
            self.log.info("CondaTainer kernelspecs: %d written, %d removed", len(result.written), len(result.removed))
            for name, reason in result.broken.items():
                self.log.warning("CondaTainer kernelspec %s is broken (kept, shown as broken): %s", name, reason)
        self._adoption = self._adopt_before_serving()

    def _adopt_before_serving(self) -> asyncio.Future:
        """Before the first request: adopt the kernels a server that is gone left
        (``persist_kernels``), or forget their records (the sweeps then clean up after them).

        A notebook that reconnects at once must find its kernel, or the session store drops
        its session. The server listens as soon as its loop runs, so an adoption runs the loop
        until it is done (a task when the loop already runs, as in a test harness). Without
        records to adopt, the loop is not touched: start-up goes on as jupyter_server's.
        """
        loop = self.serverapp.io_loop.asyncio_loop
        done = loop.create_future()
        done.set_result(None)
        orphans = persistence.orphans(self.condatainer)  # a few small files, while nothing is served yet
        manager = self.serverapp.kernel_manager
        if not orphans:
            return done
        if not isinstance(manager, CondaTainerKernelManager) or not manager.persist_kernels:
            for record in orphans:
                persistence.remove(self.condatainer, record.kernel_id)
            return done
        if loop.is_running():
            return loop.create_task(self._adopt_kernels(manager))
        loop.run_until_complete(self._adopt_kernels(manager))
        return done

    def initialize_handlers(self) -> None:
        """Mount the REST API (:data:`~kernel_provider.server.handlers.ROUTES`)."""
        # Ours first: the overlays route takes any name, "x/resize" too.
        self.handlers.extend(
            [
                *progress.ROUTES,
                *disk.ROUTES,
                *terminal.ROUTES,
                *stack.ROUTES,
                *runtime_handler.ROUTES,
                *KERNEL_ROUTES,
                *ROUTES,
            ]
        )

    def _emit(self, job: Job) -> None:
        self.serverapp.event_logger.emit(schema_id=JOB_EVENT, data=job.to_json(log=False))

    def _emit_notice(self, event: str, notice: notices.KernelNotice) -> None:
        self.serverapp.event_logger.emit(schema_id=KERNEL_EVENT, data={"event": event, **notice.to_json()})

    async def _start_jupyter_server_extension(self, serverapp) -> None:
        InstanceManager.for_config(self.condatainer).serve()  # stop_extension stops what it owns
        await self._adoption  # before the sweeps: they must find adopted kernels owned
        if self.sweep_orphans:
            await self._sweep()
        self._prewarming = asyncio.get_running_loop().create_task(self._prewarm())

    async def _sweep(self) -> None:
        """Clean up after a crashed server: unfinished env work, terminals' env files, SLURM jobs, instances."""
        operations: EnvOperations = self.settings["condatainer_operations"]
        recovery = await asyncio.to_thread(operations.recover)
        for path in recovery.removed:
            self.log.info("CondaTainer recovery: removed the unfinished work file %s", path)
        for outcome in recovery.outcomes:
            self.log.warning("CondaTainer recovery: %s", outcome)
            self.jobs.record("recover", "", outcome)
        for path in await asyncio.to_thread(stackshell.sweep_env_files, runtime_dir()):
            self.log.info("CondaTainer: removed %s, the env file of a terminal whose server is gone", path)
        await self._sweep_slurm_jobs()
        try:
            swept = await InstanceManager.for_config(self.condatainer).sweep_orphans()
        except InstanceError as err:
            self.log.warning("CondaTainer orphan sweep failed: %s", err)
            return
        if swept:
            self.log.info("CondaTainer: stopped %d orphaned instance(s): %s", len(swept), ", ".join(swept))

    async def _prewarm(self) -> None:
        """Start the chosen stacks warm (:mod:`kernel_provider.kernel.prewarm`), after the sweeps."""
        latest = await asyncio.to_thread(prewarm.recent, self.condatainer)
        names = prewarm.chosen(self.prewarm, latest, self.prewarm_recent)
        if not names:
            return
        manager = self.serverapp.kernel_manager
        warmed = await prewarm.prewarm(manager, names, self.serverapp.root_dir, self.log)
        if warmed:
            self.log.info("CondaTainer: started warm: %s", ", ".join(warmed))

    async def _adopt_kernels(self, manager: CondaTainerKernelManager) -> None:
        adopted = await manager.adopt_kernels()
        if adopted:
            self.log.info("CondaTainer: adopted %d kernel(s): %s", len(adopted), ", ".join(adopted))

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
        """Cancel every job as the server stops, and the starts of SLURM kernels whose job still
        waits (their jobs are cancelled at once); what a job leaves, the next start's recovery removes.
        Remove the env files of stack terminals; stop the warm instances and wait for the stops
        running in the background."""
        progress.uninstall()
        if self._emit_notice in notices.board.listeners:
            notices.board.listeners.remove(self._emit_notice)
        for kernel_id in slurm_provisioner.waiting_kernels():
            slurm_provisioner.cancel_start(kernel_id)
        if self._prewarming is not None:
            self._prewarming.cancel()
            await asyncio.gather(self._prewarming, return_exceptions=True)
        await self.jobs.shutdown()
        self.settings["condatainer_terminals"].forget_ended(everything=True)
        await InstanceManager.for_config(self.condatainer).close()
