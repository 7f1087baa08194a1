"""The host's side of an instance's fork server (:mod:`kernel_provider.incontainer.zygote`).

:class:`Zygote` starts the fork server with ``apptainer exec`` and asks it for kernels;
:class:`ForkedKernel` is such a kernel, watched by its host PID. It is not our child (its
parent is the fork server, in the instance's own PID namespace), so there is no process to
wait for: liveness is ``/proc/PID/stat`` (PID and start time, so a reused PID is not it), and
the host PID comes with the fork server's answer, as ``SCM_CREDENTIALS`` that the kernel
translates into our PID namespace.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
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
POLL_INTERVAL = 0.02  # seconds between looks at a starting fork server or an ending kernel
SOCKET_PATH_LIMIT = 105  # sun_path: 107 bytes, less the '.t' of the temporary name the server binds first
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
    """The fork server of one instance, from its start to its end."""

    def __init__(self, python: str, process: subprocess.Popen, socket_path: str, env_file: str):
        self.python = python
        self.process = process
        self.socket_path = socket_path
        self.env_file = env_file

    @staticmethod
    def files(directory: Path, instance_name: str) -> tuple[Path, Path]:
        """The fork server's socket (a short name: a socket's path has at most 107 bytes) and env
        file in the runtime directory."""
        short = hashlib.sha256(instance_name.encode()).hexdigest()[:10]
        return directory / f"z-{short}", directory / f"{instance_name}.zygote.env"

    @classmethod
    async def start(
        cls, apptainer: str, instance_name: str, env: list[tuple[str, str]], python: str, pwd: str
    ) -> Zygote:
        """Start the fork server in a running instance and wait until it listens.

        Its output goes where the kernels' output goes (the server's log): each kernel inherits it.
        """
        socket_path, env_path = (str(path) for path in cls.files(runtime_dir(), instance_name))
        if len(socket_path.encode()) > SOCKET_PATH_LIMIT:
            raise ZygoteError(f"the runtime directory is too long for a unix socket ({socket_path})")
        env_file = str(write_private(Path(env_path), command.render_env_file(env)))
        argv = command.instance_exec_argv(apptainer, instance_name, env_file, [python, ZYGOTE_SCRIPT, socket_path], pwd)
        # A plain Popen, not an asyncio one: the server may stop it from another event loop than the
        # one that started it (jupyter_client's blocking managers, a test's asyncio.run). Not in a
        # thread either: a cancelled start would lose the process it made. Popen is a vfork, ~1 ms.
        process = subprocess.Popen(  # noqa: ASYNC220
            argv, stdin=subprocess.DEVNULL, env=apptainer_env(), start_new_session=True
        )
        zygote = cls(python, process, socket_path, env_file)
        try:
            await asyncio.wait_for(zygote._listening(), READY_TIMEOUT)
        except BaseException as err:
            await zygote.close()
            if isinstance(err, asyncio.TimeoutError):
                raise ZygoteError(f"the fork server did not listen within {READY_TIMEOUT:.0f} s") from None
            raise
        return zygote

    async def _listening(self) -> None:
        while not os.path.exists(self.socket_path):  # noqa: ASYNC240 - a stat in the runtime directory
            if self.process.poll() is not None:
                raise ZygoteError(f"the fork server exited with status {self.process.returncode} (see the log)")
            await asyncio.sleep(POLL_INTERVAL)

    def alive(self) -> bool:
        """The fork server still runs (its ``apptainer exec`` process has not ended)."""
        return self.process.poll() is None and os.path.exists(self.socket_path)

    async def fork(self, args: list[str], env: dict[str, str], cwd: str, log: str = "") -> ForkedKernel:
        """A kernel forked with these arguments, extra variables and working directory; its output
        appended to ``log`` (a file the container sees at the same path)."""
        request = json.dumps({"args": args, "env": env, "cwd": cwd, "log": log}).encode() + b"\n"
        try:
            pid = await asyncio.to_thread(self._request, request)
        except (OSError, ValueError) as err:
            raise ZygoteError(f"the fork server did not answer: {err}") from err
        return ForkedKernel(pid)

    def _request(self, request: bytes) -> int:
        """One request, blocking (run in a thread): the forked kernel's host PID."""
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
        raise ZygoteError("the fork server's answer did not say which process the kernel is")

    async def close(self) -> None:
        """Stop the fork server (its kernels go on) and remove its socket and env file."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        await asyncio.to_thread(self.process.wait)
        for path in (self.socket_path, self.env_file):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
