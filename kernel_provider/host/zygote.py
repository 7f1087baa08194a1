"""The host's side of an instance's fork server (:mod:`kernel_provider.incontainer.zygote`).

:class:`Zygote` is the fork server: the instance's own start script (its imports run while
``apptainer instance start`` finishes), or, for a new one in a running instance, an ``apptainer
exec``; it asks the fork server for kernels.
:class:`ForkedKernel` is such a kernel, watched by its host PID. It is not our child (its
parent is the fork server, in the instance's own PID namespace), so there is no process to
wait for: liveness is ``/proc/PID/stat`` (PID and start time, so a reused PID is not it), and
the host PID comes with the fork server's answer, as ``SCM_CREDENTIALS`` that the kernel
translates into our PID namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shlex
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from kernel_provider.host.process import apptainer_env
from kernel_provider.host.runtime import runtime_dir, write_private
from kernel_provider.host.state import process_start_time
from kernel_provider.incontainer.constants import LIB_DIR
from kernel_provider.incontainer.proctree import is_running
from kernel_provider.model import command

ZYGOTE_SCRIPT = f"{LIB_DIR}/kernel_provider/incontainer/zygote.py"
READY_TIMEOUT = 60.0  # a fresh SquashFS mount, imports included, on a loaded machine
REQUEST_TIMEOUT = 15.0
POLL_INTERVAL = 0.02  # seconds between looks at an ending kernel
READY_POLL = 0.005  # between looks for a starting fork server's socket: the first kernel waits for it
READ_AHEAD_KEEP = 30 * 86400.0  # seconds a stack's read-ahead list outlives its last instance start
SOCKET_PATH_LIMIT = 105  # sun_path: 107 bytes, less the '.t' of the temporary name the server binds first
READ_AHEAD_PREFIX = "read-ahead-"
EXEC_VIEW = {"COMMAND": "exec", "BIND": ""}  # APPTAINER_*/SINGULARITY_* in an exec into an instance
# A value the env file would expand inside the container: only the exec path gives it exactly.
EXPANDED = ("$", "`", "\\")


class ZygoteError(RuntimeError):
    """The fork server could not start or refused a kernel; the kernel starts by exec instead."""


class ForkedKernel:
    """A kernel forked by a fork server, with the parts of ``asyncio.subprocess.Process`` the
    provisioner uses: ``pid`` (the host PID), ``returncode`` and ``wait``."""

    def __init__(self, pid: int):
        self.pid = pid
        self._start_time = process_start_time(pid)
        self._ended = self._start_time is None

    @property
    def returncode(self) -> int | None:
        """None while the kernel runs, else 0: its exit status went to the fork server, which reaped it."""
        if not self._ended:
            self._ended = process_start_time(self.pid) != self._start_time or not is_running(self.pid)
        return 0 if self._ended else None

    async def wait(self) -> int:
        """Until the kernel has ended."""
        while self.returncode is None:  # noqa: ASYNC110 - not our child: nothing to await but /proc
            await asyncio.sleep(POLL_INTERVAL)
        return 0

    def send_signal(self, signum: int) -> None:
        """SIGINT to the kernel itself; other signals to its session's process group (the kernel
        and what it started)."""
        if self.returncode is not None:
            return
        try:
            if signum == signal.SIGINT:
                os.kill(self.pid, signum)
            else:
                os.killpg(self.pid, signum)
        except ProcessLookupError:
            pass


def fork_problem(python: str, cmd: list[str], extra_env: dict[str, str], launcher: str) -> str:
    """Why this kernel cannot be forked (the exec path would give it something a fork cannot), or ''."""
    if len(cmd) < 2 or cmd[1] != launcher:
        return "its kernelspec does not run ipykernel"
    if cmd[0] != python:
        return f"its kernelspec runs {cmd[0]}, the fork server {python}"
    expanded = sorted(key for key, value in extra_env.items() if any(c in value for c in EXPANDED))
    if expanded:
        return f"the container would expand the values of {', '.join(expanded)}"
    return ""


class Zygote:
    """The fork server of one instance, from its start to its end: its host PID (from its answer to
    a hello), and the ``apptainer exec`` process that runs it unless it is the instance's start script."""

    def __init__(self, python: str, socket_path: str, process: subprocess.Popen | None = None):
        self.python = python
        self.socket_path = socket_path
        self.process = process
        self.env_file = ""  # the exec's env file
        self.pid = 0
        self._start_time: int | None = None

    @staticmethod
    def files(directory: Path, instance_name: str) -> tuple[Path, Path, Path, Path]:
        """The fork server's socket (a short name: a socket's path has at most 107 bytes), the exit
        status its start script leaves, its env file (when started by exec) and the start script,
        in the runtime directory."""
        short = hashlib.sha256(instance_name.encode()).hexdigest()[:10]
        return (
            directory / f"z-{short}",
            directory / f"z-{short}.exit",
            directory / f"{instance_name}.zygote.env",
            directory / f"{instance_name}.start",
        )

    @staticmethod
    def read_ahead_list(python: str, images: list[str]) -> Path:
        """Where the fork servers of a stack (its Python and images) list the files their start
        read, for the start script of its next instance to read ahead: in the runtime directory,
        which every instance binds."""
        key = hashlib.sha256("\0".join([python, *images]).encode()).hexdigest()[:10]
        return runtime_dir() / f"{READ_AHEAD_PREFIX}{key}"

    @staticmethod
    def sweep_read_ahead_lists(directory: Path, keep: float = READ_AHEAD_KEEP) -> None:
        """Remove the lists of stacks whose last instance started more than ``keep`` seconds ago
        (a start touches its stack's list): deleted images and stacks no longer used."""
        oldest = time.time() - keep
        for listed in directory.glob(f"{READ_AHEAD_PREFIX}*"):
            with contextlib.suppress(FileNotFoundError):
                if listed.stat().st_mtime < oldest:
                    listed.unlink()

    @classmethod
    def write_start_script(cls, instance_name: str, python: str, read_ahead: Path) -> Path:
        """The instance's start script (bound over ``/.singularity.d/startscript``): the fork
        server, with the instance's environment, then its exit status where :meth:`attach` looks.

        Meanwhile, in the background, ``cat`` reads the files the stack's last fork server read
        (``read_ahead``, touched here: in use), so that the server's imports find them in the page
        cache: a fresh mount otherwise reads and decompresses each block as the imports reach it,
        one at a time."""
        socket_path, exit_path, _, script = cls._paths(instance_name)
        with contextlib.suppress(FileNotFoundError):
            os.utime(read_ahead)
        # The runtime's variables that say "start" and list the instance's binds say what an exec
        # into the instance sees, so that a fork's environment is an exec kernel's.
        as_exec = [
            f'[ -z "${{{prefix}_{name}+set}}" ] || export {prefix}_{name}={shlex.quote(value)}\n'
            for prefix in ("APPTAINER", "SINGULARITY")
            for name, value in EXEC_VIEW.items()
        ]
        listed = shlex.quote(str(read_ahead))
        reader = f"[ -r {listed} ] && xargs cat < {listed} > /dev/null 2>&1 &\n"
        server = shlex.join(cls._server_argv(python, socket_path, read_ahead))
        text = f"#!/bin/sh\n{reader}{''.join(as_exec)}{server}\necho $? > {shlex.quote(exit_path)}\n"
        return write_private(script, text, mode=0o700)

    @staticmethod
    def _server_argv(python: str, socket_path: str, read_ahead: Path) -> list[str]:
        """The fork server's command line, as the start script and an exec both run it."""
        return [python, ZYGOTE_SCRIPT, socket_path, str(read_ahead)]

    @classmethod
    def _paths(cls, instance_name: str) -> tuple[str, str, Path, Path]:
        socket_path, exit_path, env_path, script = cls.files(runtime_dir(), instance_name)
        if len(str(socket_path).encode()) > SOCKET_PATH_LIMIT:
            raise ZygoteError(f"the runtime directory is too long for a unix socket ({socket_path})")
        return str(socket_path), str(exit_path), env_path, script

    @classmethod
    async def start(
        cls,
        apptainer: str,
        instance_name: str,
        env: list[tuple[str, str]],
        python: str,
        pwd: str,
        read_ahead: Path,
    ) -> Zygote:
        """Start the fork server in a running instance and wait until it listens.

        Its output goes where the kernels' output goes (the server's log): each kernel inherits it.
        """
        socket_path, _, env_path, _ = cls._paths(instance_name)
        env_file = str(write_private(env_path, command.render_env_file(env)))
        server = cls._server_argv(python, socket_path, read_ahead)
        argv = command.instance_exec_argv(apptainer, instance_name, env_file, server, pwd)
        # A plain Popen, not an asyncio one: the server may stop it from another event loop than the
        # one that started it (jupyter_client's blocking managers, a test's asyncio.run). Not in a
        # thread either: a cancelled start would lose the process it made. Popen is a vfork, ~1 ms.
        process = subprocess.Popen(  # noqa: ASYNC220
            argv, stdin=subprocess.DEVNULL, env=apptainer_env(), start_new_session=True
        )
        zygote = cls(python, socket_path, process)
        zygote.env_file = env_file
        try:
            await zygote._listening(zygote._exec_ended)
        except BaseException:
            await zygote.close()
            raise
        return zygote

    @classmethod
    async def attach(cls, instance_name: str, python: str, wait: bool) -> Zygote:
        """The fork server that runs as the instance's start script (:meth:`write_start_script`),
        or that a server before this one started: waited for when ``wait``, else it must listen now."""
        socket_path, exit_path, _, _ = cls._paths(instance_name)
        zygote = cls(python, socket_path)

        def ended() -> str:
            try:
                status = Path(exit_path).read_text().strip()
            except OSError:
                return ""
            return f"the fork server exited with status {status} (see the instance's log)"

        await (zygote._listening(ended) if wait else zygote._hello())
        return zygote

    def _exec_ended(self) -> str:
        if self.process is not None and self.process.poll() is not None:
            return f"the fork server exited with status {self.process.returncode} (see the log)"
        return ""

    async def _listening(self, ended: Callable[[], str]) -> None:
        """Until the server answers a hello on its socket (whose path it creates when it listens),
        at most READY_TIMEOUT seconds; ``ended`` says why it never will, or ''."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        while not os.path.exists(self.socket_path):  # noqa: ASYNC240 - a stat in the runtime directory
            if reason := ended():
                raise ZygoteError(reason)
            if loop.time() > deadline:
                raise ZygoteError(f"the fork server did not listen within {READY_TIMEOUT:.0f} s")
            await asyncio.sleep(READY_POLL)
        await self._hello()

    async def _hello(self) -> None:
        """Learn the server's host PID, by which :meth:`alive` and :meth:`close` know it."""
        self.pid = await self._ask({"hello": True})
        self._start_time = process_start_time(self.pid)

    def alive(self) -> bool:
        """The fork server still runs (the process that said hello, still listening)."""
        return (
            self._exec_ended() == ""
            and self._start_time is not None
            and process_start_time(self.pid) == self._start_time
            and is_running(self.pid)
            and os.path.exists(self.socket_path)
        )

    async def fork(self, args: list[str], env: dict[str, str], cwd: str, log: str = "") -> ForkedKernel:
        """A kernel forked with these arguments, extra variables and working directory; its output
        appended to ``log`` (a file the container sees at the same path)."""
        return ForkedKernel(await self._ask({"args": args, "env": env, "cwd": cwd, "log": log}))

    async def _ask(self, request: dict) -> int:
        """One request, in a thread: the host PID of the process that answered."""
        try:
            return await asyncio.to_thread(self._request, json.dumps(request).encode() + b"\n")
        except (OSError, ValueError) as err:
            raise ZygoteError(f"the fork server did not answer: {err}") from err

    def _request(self, request: bytes) -> int:
        """One request, blocking (run in a thread): the host PID of the process that answered."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(REQUEST_TIMEOUT)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            conn.connect(self.socket_path)
            conn.sendall(request)
            data, ancillary, _, _ = conn.recvmsg(65536, socket.CMSG_SPACE(struct.calcsize("3i")))
        answer = json.loads(data or b"{}")
        if "error" in answer:
            raise ZygoteError(f"the fork server refused: {answer['error']}")
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, _, _ = struct.unpack("3i", payload[: struct.calcsize("3i")])
                return pid
        raise ZygoteError("the fork server's answer did not say which process it is")

    async def close(self) -> None:
        """Stop the fork server (its kernels go on) and remove its socket and env file."""
        if self.process is not None:
            if self.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
            await asyncio.to_thread(self.process.wait)
        elif self._start_time is not None and process_start_time(self.pid) == self._start_time:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        for path in (self.socket_path, self.env_file):
            if path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
