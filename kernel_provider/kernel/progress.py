"""What a CondaTainer kernel's start is doing: one step at a time, in the server log and on the event bus.

A start can take a while for reasons the user cannot see (an instance to start, a SLURM
queue, ipykernel to download for a new Python). Each provisioner reports its steps to a
:class:`LaunchProgress`; every step goes to the server's log, into a short per-kernel record
(``GET /condatainer/api/kernels/ID/launch``) and, when the server extension runs, onto
jupyter_server's event bus (schema ``server/events/launch.yaml``).

Provisioners are made by jupyter_client and hold no handle on the server's event logger;
the extension hands this module an emitter (:func:`set_emitter`) and takes it back when it
stops. Without one (a plain ``jupyter console``, the tests of a bare provisioner), steps
still go to the log.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

LAUNCH_EVENT = "https://events.jupyter.org/jupyter_condatainer/launch/v1"
KEEP_KERNELS = 100  # starts remembered for the REST API, newest last

Emitter = Callable[[dict], None]
_emitter: Emitter | None = None
_recent: OrderedDict[str, list[dict]] = OrderedDict()


def set_emitter(emitter: Emitter | None) -> None:
    """Where events go besides the log: the server extension's event bus, or nowhere (None)."""
    global _emitter
    _emitter = emitter


def recent(kernel_id: str) -> list[dict]:
    """The events of the kernel's latest start (its restarts included), oldest first; empty if unknown."""
    return list(_recent.get(kernel_id, ()))


class LaunchProgress:
    """The steps of one start of one kernel; ``elapsed`` counts from its first step."""

    def __init__(self, kernel_id: str, kernel_name: str, log: logging.Logger | logging.LoggerAdapter):
        self.kernel_id = kernel_id
        self.kernel_name = kernel_name
        self.log = log
        self.current = ""  # the step running now: the one a failure names
        self._message = ""  # what it said last
        self.finished = False
        self.has_failed = False
        self._started = time.monotonic()
        _recent[kernel_id] = []
        _recent.move_to_end(kernel_id)
        while len(_recent) > KEEP_KERNELS:
            _recent.popitem(last=False)

    @property
    def elapsed(self) -> float:
        """Seconds since the start began."""
        return time.monotonic() - self._started

    def step(self, step: str, message: str) -> None:
        """A new step begins (a name of the schema's ``step`` enum, and what it does in words), or
        the running one says something new (a queued job's place); the same words again are no event."""
        if (step, message) == (self.current, self._message):
            return
        self.current, self._message = step, message
        self._emit(step, "running", message)

    def ready(self) -> None:
        """The kernel answered: the start is over."""
        self._emit("ready", "ready", f"kernel ready after {self.elapsed:.1f} s")

    def failed(self, error: str) -> None:
        """The start failed in the current step (reported once, however many layers see the error)."""
        if self.finished:
            return
        step = self.current or "stack"
        message = f"failed while {STEP_WORDS.get(step, step)}: {error.splitlines()[0] if error else ''}"
        self._emit(step, "failed", message, error)

    def _emit(self, step: str, state: str, message: str, error: str | None = None) -> None:
        if self.finished:
            return
        self.finished = state != "running"
        self.has_failed = state == "failed"
        data = {
            "kernel_id": self.kernel_id,
            "kernel_name": self.kernel_name,
            "step": step,
            "state": state,
            "message": message,
            "elapsed": round(self.elapsed, 2),
            "error": error,
        }
        level = logging.WARNING if state == "failed" else logging.INFO
        self.log.log(level, "CondaTainer kernel %s [%.1f s]: %s", self.kernel_id, data["elapsed"], message)
        _recent.setdefault(self.kernel_id, []).append(data)
        if _emitter is not None:
            try:
                _emitter(data)
            except Exception:  # noqa: BLE001 - a broken listener must not fail the kernel's start
                self.log.exception("CondaTainer kernel %s: could not emit a launch event", self.kernel_id)


# How a failure names its step ("failed while starting the instance: …").
STEP_WORDS = {
    "stack": "reading the stack",
    "instance": "starting the instance",
    "queue": "waiting in the SLURM queue",
    "python": "checking the stack's Python",
    "supply": "supplying ipykernel",
    "kernel": "starting the kernel",
    "wait": "waiting for the kernel",
}
