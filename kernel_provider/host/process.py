"""Running host commands from the event loop: spawn, stream, run, kill, and Apptainer's own environment."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kernel_provider.host.runtime_detect import flavour_for
from kernel_provider.incontainer.diagnosis import Context, explain
from kernel_provider.model import command

PR_SET_PDEATHSIG = 1  # <sys/prctl.h>
_LIBC = ctypes.CDLL(None, use_errno=True)


class InstanceError(RuntimeError):
    """An instance could not be started, probed or stopped; the message says why."""


@dataclass(frozen=True)
class CommandResult:
    """What :func:`run` gives back: the exit status and the decoded output."""

    returncode: int
    stdout: str
    stderr: str


def _cap_bounding_set() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("CapBnd:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return ~0


def apptainer_env(binary: str = "") -> dict[str, str]:
    """Environment for running the container runtime ``binary`` itself on this host (default:
    CondaTainer's choice of runtime); its flavour names the variables (``SINGULARITY_*``)."""
    return command.apptainer_process_env(os.environ, os.getuid(), _cap_bounding_set(), flavour_for(binary))


async def spawn(
    argv: Sequence[str],
    env: dict[str, str] | None = None,
    merge_stderr: bool = False,
    die_with_parent: bool = False,
    keep_fds: Sequence[int] = (),
):
    """Start a command in its own process group, output piped, without blocking the loop.

    ``die_with_parent``: the command gets SIGKILL when this process dies (for work on a
    temporary copy, which a dead server's successor deletes: nothing may keep writing it).
    ``keep_fds``: descriptors the command inherits (a lock it must go on holding if we die).
    """
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE,
        env=env or apptainer_env(argv[0]),
        start_new_session=True,
        preexec_fn=_kill_me_with_parent if die_with_parent else None,
        pass_fds=tuple(keep_fds),
    )


def _kill_me_with_parent() -> None:
    """In the forked child: ask the kernel for SIGKILL when the parent exits (Linux prctl)."""
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


async def kill_group(process: asyncio.subprocess.Process) -> None:
    """Kill a spawned command and everything it started (Apptainer forks a starter)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    await process.wait()


async def run(argv: Sequence[str], timeout: float, env: dict[str, str] | None = None) -> CommandResult:
    """Run a command to completion without blocking the loop; kill it on timeout or cancel."""
    process = await spawn(argv, env)
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except (asyncio.TimeoutError, asyncio.CancelledError):
        await kill_group(process)
        raise
    return CommandResult(process.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"))


def apptainer_message(stderr: str) -> str:
    """The lines of Apptainer's output a user needs (drop the gocryptfs noise)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip() and "gocryptfs" not in line]
    return "\n".join(lines[-8:]) or "(no output)"


async def run_logged(argv: Sequence[str], log: Callable[[str], None], **options: Any) -> tuple[int, list[str]]:
    """:func:`stream` each line to ``log``, keeping the lines for the error message: (exit code, lines)."""
    lines: list[str] = []

    def keep(line: str) -> None:
        lines.append(line)
        log(line)

    return await stream(argv, keep, **options), lines


async def stream(
    argv: Sequence[str],
    on_line: Callable[[str], None],
    env: dict[str, str] | None = None,
    die_with_parent: bool = False,
    keep_fds: Sequence[int] = (),
) -> int:
    """Run a command, passing each output line on; kill its process group if cancelled."""
    process = await spawn(argv, env, merge_stderr=True, die_with_parent=die_with_parent, keep_fds=keep_fds)
    try:
        assert process.stdout is not None
        async for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line and "gocryptfs" not in line:
                on_line(line)
        return await process.wait()
    except asyncio.CancelledError:
        await kill_group(process)
        raise


def failure(what: str, lines: list[str], context: Context | None = None) -> str:
    """What happened in plain words when the output tells (:mod:`.diagnosis`), then ``what``
    failed and the tool's last lines as detail."""
    return explain(what, "\n".join(lines), context)


def output_tail(lines: list[str]) -> str:
    """The last lines of a tool's output: the detail under an error's first line."""
    return "\n".join(lines[-15:]) or "(no output)"
