"""A SLURM kernel's time limit: how much is left, warnings before the end, and the end itself.

A :class:`WalltimeWatch` runs in the server's event loop while a kernel's job runs. It asks
squeue for the job's end time every ``poll`` seconds (an administrator may extend a limit;
the end comes from SLURM, never from the server's own guess) and sleeps until the next
threshold in between, so a warning comes on time without polling SLURM more. Each change
goes to the kernel's :class:`~kernel_provider.kernel.notices.KernelNotice` (REST API, event
bus) and to the instance info file, where ``%condatainer info`` reads the end time inside
the kernel.

When the job ends its kernel step dies with it and jupyter_server restarts the kernel; the
restart finds the job gone and submits a new one. Whoever sees the end first (this watch,
or that restart) reports it with :func:`report_end`: a job SLURM ended as ``TIMEOUT`` (or
that is gone after its end time) reached its time limit, which the user is told as such.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence

from kernel_provider.host import instanceinfo
from kernel_provider.host.process import InstanceError
from kernel_provider.host.runtime import write_private
from kernel_provider.kernel import notices
from kernel_provider.kernel.slurm import ACTIVE_STATES, JobState, SlurmAllocation

TIME_LIMIT_STATES = frozenset({"TIMEOUT", "DEADLINE"})
TIME_LIMIT_REASONS = frozenset({"TimeLimit", "DeadLine"})  # a COMPLETING job's reason says why it ends
OTHER_ENDS = frozenset({"CANCELLED", "COMPLETED", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL"})
# SLURM enforces limits on its own clock and about every 30 s: a job gone this close to its end time reached it.
END_SLACK = 60.0


def crossed(time_left: float, thresholds: Sequence[float], announced: Sequence[float]) -> list[float]:
    """The thresholds (minutes) that ``time_left`` (seconds) has reached and nobody announced yet."""
    return sorted((t for t in thresholds if time_left <= t * 60 and t not in announced), reverse=True)


def next_wakeup(time_left: float, thresholds: Sequence[float], announced: Sequence[float], poll: float) -> float:
    """Seconds to sleep: until the next threshold, or ``poll``, whichever is sooner (at least 0.2 s)."""
    upcoming = [time_left - t * 60 for t in thresholds if t not in announced and time_left > t * 60]
    return max(0.2, min([poll, *upcoming]))


def ended_by_time_limit(state: JobState | None, end_time: float | None, now: float | None = None) -> bool:
    """Did the job end by its time limit (``end_time``, as last seen while it ran)? SLURM says
    TIMEOUT (or, while the job completes, reason TimeLimit) while it remembers the job
    (``MinJobAge``); after that, a job gone at (or just before) its end time did."""
    if state is not None and (state.state in TIME_LIMIT_STATES or state.reason in TIME_LIMIT_REASONS):
        return True
    if state is not None and state.state in OTHER_ENDS:
        return False
    now = time.time() if now is None else now
    return end_time is not None and now >= end_time - END_SLACK


def warning_message(job_id: str, time_left: float) -> str:
    """What the user reads when a threshold is crossed."""
    return (
        f"SLURM job {job_id} ends in {notices.format_duration(time_left)} (its time limit): "
        "save your work; the kernel ends with the job"
    )


def report_end(kernel_id: str, job_id: str, state: JobState | None, logger: logging.Logger) -> notices.KernelNotice:
    """Tell the user how the kernel's job ended, once per job (the watch and the restart both may see it)."""
    notice = notices.board.get(kernel_id)
    if notice is not None and notice.job_id == job_id and notice.ended:
        return notice
    end_time = notice.end_time if notice and notice.job_id == job_id else None
    if ended_by_time_limit(state, end_time):
        event, ended = notices.TIME_LIMIT, notices.TIME_LIMIT
        message = (
            f"SLURM job {job_id} reached its time limit and ended, and the kernel with it "
            "(its variables are lost); a restart submits a new job"
        )
        logger.warning("CondaTainer kernel %s: %s", kernel_id, message)
    else:
        event, ended = notices.ENDED, notices.ENDED
        how = state.state if state else "left the queue"
        message = f"SLURM job {job_id} ended ({how}) and the kernel with it; a restart submits a new job"
        logger.warning("CondaTainer kernel %s: %s", kernel_id, message)
    return notices.board.update(
        kernel_id, event, job_id=job_id, state=state.state if state else "", ended=ended, message=message
    )


def write_job_info(allocation: SlurmAllocation, end_time: float | None) -> None:
    """Add the job to the instance info file that ``%condatainer info`` reads in the kernel."""
    path = instanceinfo.path(allocation.name)
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    info["slurm"] = {"job_id": allocation.job_id, "node": allocation.node, "end_time": end_time}
    write_private(path, json.dumps(info, indent=1))


class WalltimeWatch:
    """Watches one running job's time limit until the job ends or :meth:`stop` is called."""

    def __init__(
        self,
        kernel_id: str,
        allocation: SlurmAllocation,
        thresholds: Sequence[float],
        poll: float,
        logger: logging.Logger,
    ):
        self.kernel_id = kernel_id
        self.allocation = allocation
        self.thresholds = [float(t) for t in thresholds]
        self.poll = poll
        self.log = logger
        self._task: asyncio.Task | None = None
        self._info_end: float | None = None  # the end time the info file has

    async def start(self, state: JobState) -> None:
        """Record the running job (node, end time; also in the info file, before the kernel's
        first cell can ask) and start watching it."""
        self._record(state, event=notices.RUNNING)
        await self._write_info(state.end_time)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _write_info(self, end_time: float | None) -> None:
        # The runtime directory may be on a network filesystem: off the event loop.
        await asyncio.to_thread(write_job_info, self.allocation, end_time)
        self._info_end = end_time

    async def stop(self) -> None:
        """Stop watching (the kernel is shut down, or its job is released)."""
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _record(self, state: JobState, event: str = "") -> notices.KernelNotice:
        allocation = self.allocation
        previous = notices.board.get(self.kernel_id)
        left = state.end_time - time.time() if state.end_time else None
        message = (
            f"SLURM job {allocation.job_id} runs on {allocation.node}"
            + (f"; {notices.format_duration(left)} left" if left is not None else "; no time limit")
            if event
            else (previous.message if previous else "")
        )
        return notices.board.update(
            self.kernel_id,
            event,
            job_id=allocation.job_id,
            state=state.state,
            node=allocation.node,
            partition=state.partition,
            reason="",
            end_time=state.end_time,
            ended="",
            message=message,
            **({"warnings": []} if event else {}),
        )

    async def _run(self) -> None:
        allocation = self.allocation
        while True:
            try:
                state = await allocation.state()
            except (InstanceError, OSError, asyncio.TimeoutError) as err:
                self.log.warning("CondaTainer kernel %s: squeue failed, asking again later: %s", self.kernel_id, err)
                await asyncio.sleep(self.poll)
                continue
            if state is None or state.state not in ACTIVE_STATES:
                report_end(self.kernel_id, allocation.job_id, state, self.log)
                return
            notice = self._record(state)
            if state.end_time != self._info_end:  # an administrator changed the limit
                await self._write_info(state.end_time)
            left = notice.time_left()
            if left is None:
                await asyncio.sleep(self.poll)
                continue
            due = crossed(left, self.thresholds, notice.warnings)
            if due:
                message = warning_message(allocation.job_id, left)
                self.log.warning("CondaTainer kernel %s: %s", self.kernel_id, message)
                notices.board.update(
                    self.kernel_id, notices.WARNING, warnings=[*notice.warnings, *due], message=message
                )
            await asyncio.sleep(next_wakeup(left, self.thresholds, [*notice.warnings, *due], self.poll))
