"""Background jobs: long overlay operations with progress, a log, and cancellation.

A job is an asyncio task in the server's loop. At most ``concurrency`` jobs run at once (each
runs solvers and containers: a hundred at once would starve the machine); the others wait in
order as ``queued`` and can be cancelled there. Every change of state, progress or log is
pushed through a callback (the server extension emits it on jupyter_server's event bus), so
clients never have to poll in tight loops.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

LOG_LIMIT = 2000
KEEP_FINISHED = 50
TERMINAL_STATES = ("succeeded", "failed", "cancelled")


class JobError(RuntimeError):
    """An operation failed in a way the user should read as is (the tool's message)."""


@dataclass
class Job:
    """One operation as clients see it; its JSON is what the REST API and the event bus carry."""

    id: str
    kind: str
    target: str
    state: str = "pending"
    progress: float = 0.0
    message: str = ""
    log: list[str] = field(default_factory=list)
    error: str | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None
    cancellable: bool = True

    def to_json(self, log: bool = True) -> dict:
        """The job for clients: with its whole log, or (``log=False``: listings, events) the last lines."""
        data = {
            "id": self.id,
            "kind": self.kind,
            "target": self.target,
            "state": self.state,
            "progress": round(self.progress, 3),
            "message": self.message,
            "error": self.error,
            "created": self.created,
            "finished": self.finished,
            "cancellable": self.cancellable and self.state not in TERMINAL_STATES,
        }
        if log:
            data["log"] = list(self.log)
        else:
            data["log_tail"] = self.log[-5:]
        return data


class JobContext:
    """What a running operation uses to report on itself."""

    def __init__(self, job: Job, changed: Callable[[Job], None]):
        self.job = job
        self._changed = changed

    def log(self, line: str) -> None:
        """Add a line of the tool's output to the job's log (only the last ``LOG_LIMIT`` are kept)."""
        line = line.rstrip()
        if not line:
            return
        self.job.log.append(line)
        del self.job.log[:-LOG_LIMIT]
        self._changed(self.job)

    def step(self, progress: float, message: str) -> None:
        """Move the progress (never backwards) and say what runs now."""
        self.job.progress = max(self.job.progress, min(progress, 1.0))
        self.job.message = message
        self._changed(self.job)

    def point_of_no_return(self) -> None:
        """From here on, stopping halfway could leave a half-changed env: refuse cancel."""
        self.job.cancellable = False
        self._changed(self.job)


def job_running_message(target: str, job: Job) -> str:
    """The refusal while ``job`` works on ``target`` (one operation per image at a time)."""
    return f"{target} has a {job.kind} job {job.state} (job {job.id}); wait for it to end or cancel it"


def _cancelled_message(job: Job) -> str:
    """Cancels stop before an operation's commit, so nothing of it took effect."""
    if job.kind in ("create", "freeze"):
        return "cancelled; nothing was created"
    return f"cancelled; {job.target} is as it was before"


class JobRegistry:
    """Jobs of this server, newest last; at most ``concurrency`` run at once (default: one per CPU)."""

    def __init__(self, on_change: Callable[[Job], None] = lambda job: None, concurrency: int | None = None):
        self.jobs: dict[str, Job] = {}
        self.concurrency = max(1, concurrency or os.cpu_count() or 1)
        self._tasks: dict[str, asyncio.Task] = {}
        self._on_change = on_change
        self._running = 0
        self._queue: deque[asyncio.Future] = deque()  # one per queued job: set when its turn comes

    def submit(self, kind: str, target: str, work: Callable[[JobContext], Awaitable[str]]) -> Job:
        """Start ``work(context)`` now, or queue it while ``concurrency`` jobs run; its return value
        becomes the job's final message."""
        job = Job(id=secrets.token_hex(6), kind=kind, target=target)
        self.jobs[job.id] = job
        turn = self._take_slot(job)
        self._tasks[job.id] = asyncio.get_running_loop().create_task(self._run(job, work, turn))
        self._forget_old()
        self._on_change(job)
        return job

    def record(self, kind: str, target: str, message: str) -> Job:
        """A finished job for something that happened outside a request (recovery at start),
        so the panel and the REST API tell the user what became of their env."""
        now = time.time()
        job = Job(
            id=secrets.token_hex(6),
            kind=kind,
            target=target,
            state="succeeded",
            progress=1.0,
            message=message,
            created=now,
            finished=now,
            cancellable=False,
        )
        self.jobs[job.id] = job
        self._on_change(job)
        return job

    def _take_slot(self, job: Job) -> asyncio.Future | None:
        """None when the job may run now, else the future that tells it its turn has come."""
        if self._running < self.concurrency:
            self._running += 1
            return None
        job.state = "queued"
        job.message = (
            f"queued: waiting for one of the {self.concurrency} running jobs to end ({len(self._queue) + 1} waiting)"
        )
        turn = asyncio.get_running_loop().create_future()
        self._queue.append(turn)
        return turn

    def _give_slot(self) -> None:
        """A job ended: its slot goes to the first queued job still waiting, if any."""
        while self._queue:
            turn = self._queue.popleft()
            if not turn.done():  # not cancelled meanwhile
                turn.set_result(None)
                return
        self._running -= 1

    async def _run(self, job: Job, work: Callable[[JobContext], Awaitable[str]], turn: asyncio.Future | None) -> None:
        context = JobContext(job, self._on_change)
        try:
            if turn is not None:
                await turn
            job.state, job.message = "running", ""
            self._on_change(job)
            job.message = await work(context) or "done"
            job.state, job.progress = "succeeded", 1.0
        except asyncio.CancelledError:
            started = job.state == "running"
            job.state = "cancelled"
            job.message = _cancelled_message(job) if started else "cancelled while queued; nothing was done"
        except Exception as err:  # noqa: BLE001 - any failure must end the job, with its message
            job.state, job.error = "failed", str(err) or type(err).__name__
            job.message = job.error.splitlines()[0]
        finally:
            if turn is None or turn.done() and not turn.cancelled():
                self._give_slot()  # it held a slot (even if cancelled just as its turn came)
            elif turn in self._queue:
                self._queue.remove(turn)
            job.finished = time.time()
            self._tasks.pop(job.id, None)
            self._on_change(job)

    def running_for(self, target: str) -> Job | None:
        """The job (running or queued) working on ``target``, if any: one operation per image at a time."""
        return next((j for j in self.jobs.values() if j.target == target and j.state not in TERMINAL_STATES), None)

    async def cancel(self, job_id: str) -> Job:
        """Stop a running or queued job and wait until it has ended; :class:`JobError` past its point of no return."""
        job = self.jobs[job_id]
        task = self._tasks.get(job_id)
        if task is None:
            return job
        if not job.cancellable:
            raise JobError(f"job {job_id} is past the point where it can be stopped safely; it will finish on its own")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return job

    async def shutdown(self) -> None:
        """As the server stops: cancel the jobs that can stop safely, let the others finish.

        A job past its point of no return (a change running inside a kernel's container) would
        leave its env half-changed if it were killed, so the server waits for it.
        """
        tasks = list(self._tasks.items())
        for job_id, task in tasks:
            if self.jobs[job_id].cancellable:
                task.cancel()
        await asyncio.gather(*(task for _, task in tasks), return_exceptions=True)

    def _forget_old(self) -> None:
        finished = [j for j in self.jobs.values() if j.state in TERMINAL_STATES]
        for job in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            self.jobs.pop(job.id, None)
