"""Ending a SingularityCE OCI-mode container from the host.

In OCI mode (``singularity exec --oci``) the command runs under runc as PID 1 of its own PID
namespace, in a session of its own: ``singularity`` → ``singularity`` → ``runc run`` → the
command. PID 1 ignores SIGTERM (it has no handler), and killing ``singularity`` itself would
leave runc's container and the FUSE mounts of its bundle behind. So a container is ended by
SIGKILL to its PID 1 — the kernel dies with its namespace, runc returns, and ``singularity``
unmounts the bundle and exits by itself.

There are no instances to list, so a sweep finds such a container by our own record of its
``exec --oci`` process: PID and start time (a recycled PID is never mistaken for it).
"""

from __future__ import annotations

import asyncio
import os
import signal

from kernel_provider.host.state import process_start_time
from kernel_provider.incontainer.proctree import descendants

EXIT_POLL = 0.1


def identify(pid: int) -> tuple[int, int] | None:
    """``(pid, start time)`` of a running process, what a record keeps; None when it is gone."""
    start = process_start_time(pid)
    return (pid, start) if start is not None else None


def is_alive(process: tuple[int, int] | list[int] | None) -> bool:
    """Whether a recorded ``exec --oci`` process (pid, start time) still runs."""
    return process is not None and len(process) == 2 and process_start_time(process[0]) == process[1]


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def container_init(exec_pid: int) -> int | None:
    """Host PID of the container's PID 1 below an ``exec --oci`` process: the first descendant
    in a session of its own (runc makes one for the container), None before it exists."""
    own = _session(exec_pid)
    for pid in descendants(exec_pid):
        session = _session(pid)
        if session is not None and session != own and session == pid:
            return pid
    return None


def kill_container(exec_pid: int) -> bool:
    """SIGKILL the container's PID 1 (its whole PID namespace dies with it); False when there
    is none (yet): then the caller kills the ``exec`` process's group instead."""
    init = container_init(exec_pid)
    if init is None:
        return False
    try:
        os.kill(init, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


async def stop_container(process: tuple[int, int], timeout: float) -> None:
    """End an ``exec --oci`` process we do not own as a child (an orphan of a dead server):
    its container first, then — if it has not exited by itself within ``timeout`` — its group."""
    if not is_alive(process):
        return
    pid = process[0]
    if await asyncio.to_thread(kill_container, pid):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while is_alive(process) and loop.time() < deadline:  # noqa: ASYNC110 - not our child: no exit to await
            await asyncio.sleep(EXIT_POLL)
    if is_alive(process):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
