"""What the server tells a notebook about its kernel beyond "idle" and "busy".

A SLURM kernel waits in a queue, has a time limit, and can end by it; any kernel can be
culled for idleness. jupyter_server's kernel model has no room for that, so each kernel
gets a :class:`KernelNotice` on the process-wide :data:`board`: the provisioner and the
kernel manager write it, the REST API (``/condatainer/api/kernels``) serves it, and every
change that a user should hear about goes to the board's listeners (the server extension
puts it on jupyter_server's event bus). A notice outlives its kernel for a while, so a
notebook that comes back to a culled or timed-out kernel can still be told why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

KEEP_ENDED = 24 * 3600.0  # seconds an ended kernel's notice is kept for a returning notebook

# What happened, as the event's ``event`` field (server/events/kernel.yaml).
QUEUED = "queued"  # the job waits: reason and expected start
RUNNING = "running"  # the job runs: node and end time
WARNING = "walltime-warning"  # a time-left threshold was crossed
TIME_LIMIT = "time-limit"  # the job reached its time limit
CULLED = "culled"  # the kernel was shut down for idleness
START_CANCELLED = "start-cancelled"  # the start was cancelled while the job waited
ENDED = "ended"  # any other end of a job (cancelled by hand, node failure)


@dataclass
class KernelNotice:
    """One kernel's job, queue position, time limit and how it ended (``ended`` empty while it runs)."""

    kernel_id: str
    job_id: str = ""
    state: str = ""  # SLURM's state of the job (PENDING, RUNNING, TIMEOUT…); empty for local kernels
    node: str = ""
    partition: str = ""
    reason: str = ""  # why a pending job waits
    expected_start: float | None = None  # epoch seconds, SLURM's estimate (squeue --start)
    end_time: float | None = None  # epoch seconds: the job's time limit
    warnings: list[float] = field(default_factory=list)  # thresholds (minutes) already announced
    ended: str = ""  # TIME_LIMIT, CULLED, START_CANCELLED, ENDED
    message: str = ""  # the last thing the user was told
    updated: float = field(default_factory=time.time)

    def time_left(self, now: float | None = None) -> float | None:
        """Seconds until the job's time limit (never below 0); None without a limit or once ended."""
        if self.end_time is None or self.ended:
            return None
        return max(0.0, self.end_time - (time.time() if now is None else now))

    def to_json(self) -> dict[str, Any]:
        """The notice as the REST API sends it, with the time left as of now."""
        return {**asdict(self), "time_left": self.time_left()}


Listener = Callable[[str, KernelNotice], None]


class NoticeBoard:
    """Every kernel's notice in this process, and who hears about changes."""

    def __init__(self) -> None:
        self.notices: dict[str, KernelNotice] = {}
        self.listeners: list[Listener] = []

    def get(self, kernel_id: str) -> KernelNotice | None:
        """The kernel's notice, if it has one."""
        return self.notices.get(kernel_id)

    def update(self, kernel_id: str, event: str = "", **changes: Any) -> KernelNotice:
        """Change a kernel's notice; with ``event``, tell the listeners (what the user should hear)."""
        notice = self.notices.get(kernel_id) or KernelNotice(kernel_id)
        for key, value in changes.items():
            setattr(notice, key, value)
        notice.updated = time.time()
        self.notices[kernel_id] = notice
        self._expire()
        if event:
            for listener in list(self.listeners):
                listener(event, notice)
        return notice

    def forget(self, kernel_id: str) -> None:
        """Drop a kernel's notice at its shutdown, unless it says how the kernel ended (a
        returning notebook is told that; an ordinary shutdown leaves nothing to tell)."""
        notice = self.notices.get(kernel_id)
        if notice is not None and not notice.ended:
            del self.notices[kernel_id]

    def _expire(self) -> None:
        cutoff = time.time() - KEEP_ENDED
        for kernel_id in [k for k, n in self.notices.items() if n.ended and n.updated < cutoff]:
            del self.notices[kernel_id]


board = NoticeBoard()


def format_duration(seconds: float) -> str:
    """``1 h 02 min``, ``14 min 59 s``, ``42 s``: a time left as a person reads it."""
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"
