"""The fork server ("zygote") of an instance: kernels start as forks of a warm interpreter.

Runs inside the container with the stack's Python, started once per instance by ``apptainer
exec`` with the instance's environment (what a kernel started by exec gets, less the variables
of each kernel). It prepares itself as :mod:`.launch` prepares a kernel (conda activation, the
supplied ipykernel), imports what every kernel imports (ipykernel, IPython, zmq, tornado, the
``%condatainer`` magic and the stack record's extension) without creating a zmq context, an
event loop or a thread (none may exist across a ``fork``), then serves a unix socket in the
user's runtime directory.

One request per connection, one JSON line each way::

    → {"args": ["-f", "/run/.../kernel-ID.json"], "env": {"JPY_SESSION_NAME": "..."}, "cwd": "/home/u"}
    ← {"pid": 42}          from the forked kernel, its credentials attached (its host PID)
    ← {"error": "..."}     refused: the host starts that kernel with ``apptainer exec`` instead
    → {"hello": true}
    ← {"pid": 7}           from the server itself, its credentials attached: the host's handle on it

It is started by ``apptainer exec`` in a running instance, or as the instance's own start script,
so that its imports overlap the end of ``apptainer instance start``. Once its first kernels are
forked, it lists the files it read (``argv[2]``): the start script of the stack's next instance
reads them ahead, on the other core, while that instance's server imports. A fresh mount's
imports otherwise wait for each block of the images to be read and decompressed, which doubles
their time.

The child starts a new session, takes the kernel's variables and working directory, reseeds
``random`` (forks would otherwise share its state) and runs ipykernel. The server reaps its
children on ``SIGCHLD``; the host watches a kernel by its host PID.

A fork is what an exec would have been only while the env is as the server found it: once an
install, a removal or a new activation script changed an env on PATH (its ``conda-meta``, its
``activate.d``, the site-packages of what was preloaded), the server refuses and exits, and the
host starts that kernel by exec and a new fork server for the next.

Standard library only at import time (ipykernel is imported in :func:`main`, inside the container).
"""

from __future__ import annotations

import gc
import glob
import json
import os
import random
import select
import signal
import socket
import stat
import struct
import sys
import threading
import traceback

PRELOAD = (
    "zmq",
    "tornado",
    "tornado.ioloop",
    "ipykernel.kernelapp",
    "IPython",
    "kernel_provider.incontainer.magic",
    "kernel_provider.incontainer.stackinfo",
)
# What IPKernelApp.initialize imports besides (about two thirds of a fork's start: the debugger's
# pydevd above all). Optional: another ipykernel or an env without debugpy imports less.
PRELOAD_IF_PRESENT = (
    "ipykernel.ipkernel",
    "ipykernel.zmqshell",
    "ipykernel.debugger",
    "debugpy.server.api",
    "IPython.core.completerlib",
    "IPython.core.debugger",
    "IPython.extensions.storemagic",
    "IPython.utils.wildcard",
    "tornado.platform.asyncio",
    "faulthandler",
    "sqlite3",
    "pdb",
    "pydoc",
    "psutil",
    "IPython.core.oinspect",
    "IPython.core.logger",
)
MAX_REQUEST = 1 << 20
READ_AHEAD_MAX = 64 << 20
IDLE = 0.05  # seconds without a request after which the server lists the files it read


def _reap(signum: int, frame: object) -> None:
    """Collect every ended child (kernels), so none stays a zombie."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _read_request(conn: socket.socket) -> dict:
    """One JSON request; ``{}`` when the host closed the connection without sending one."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk and not data:
            return {}
        if not chunk or len(data) > MAX_REQUEST:
            raise ValueError("incomplete request")
        data += chunk
    request = json.loads(data)
    if not isinstance(request, dict):
        raise ValueError("a request is a JSON object")
    return request


def fingerprint() -> list[list]:
    """What a change of the envs would change: the stat of each conda env's ``conda-meta``,
    ``conda-meta/state``, ``activate.d`` and its scripts, and of the directories the preloaded
    packages came from."""
    from kernel_provider.incontainer.activation import conda_prefixes

    paths = []
    for prefix in conda_prefixes(os.environ.get("PATH", "")):
        activate_d = os.path.join(prefix, "etc", "conda", "activate.d")
        paths += [os.path.join(prefix, "conda-meta"), os.path.join(prefix, "conda-meta", "state"), activate_d]
        paths += sorted(glob.glob(os.path.join(activate_d, "*.sh")))
    origins = {getattr(sys.modules.get(name), "__file__", None) for name in PRELOAD}
    paths += sorted({os.path.dirname(os.path.dirname(origin)) for origin in origins if origin})
    found: list[list] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            found.append([path])
            continue
        found.append([path, st.st_ino, st.st_size, st.st_mtime_ns])
    return found


def files_read() -> list[str]:
    """The files this process read to be where it is, in about the order it read them: what it
    maps (the interpreter and its libraries), then each module's bytecode, or its source when it
    has none. Left out: paths a line-based reader (``xargs``) would split, and files over
    READ_AHEAD_MAX (a locale archive, mapped whole but read in part)."""
    modules = []
    for module in list(sys.modules.values()):
        spec = getattr(module, "__spec__", None)
        cached, origin = getattr(spec, "cached", None), getattr(spec, "origin", None)
        path = cached if cached and os.path.isfile(cached) else origin
        if path and os.path.isabs(path):
            modules.append(path)
    with open("/proc/self/maps") as maps:
        mapped = [fields[5].rstrip("\n") for fields in (line.split(None, 5) for line in maps) if len(fields) == 6]
    loaded = set(modules)
    ordered = dict.fromkeys([path for path in mapped if path.startswith("/") and path not in loaded] + modules)
    return [path for path in ordered if not any(c.isspace() or c in "'\"\\" for c in path) and _worth_reading(path)]


def _worth_reading(path: str) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size <= READ_AHEAD_MAX


def note_files_read(path: str) -> None:
    """Leave :func:`files_read` at ``path`` for the next start to read ahead (unchanged: not rewritten)."""
    text = "".join(f"{file}\n" for file in files_read())
    try:
        with open(path) as handle:
            if handle.read() == text:
                return
    except OSError:
        pass
    temporary = f"{path}.{os.getpid()}"
    with open(temporary, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


class Stale(Exception):
    """The envs changed since the server started: its forks would not be what an exec gives."""


def _check(request: dict, started_with: list[list]) -> tuple[list[str], dict[str, str], str, str]:
    args, env, cwd = request.get("args"), request.get("env", {}), request.get("cwd", "")
    log = request.get("log", "")
    if not isinstance(log, str):
        raise ValueError("log must be a path")
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ValueError("args must be a list of strings")
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ValueError("env must map strings to strings")
    if not isinstance(cwd, str) or not os.path.isdir(cwd):
        raise ValueError(f"the working directory {cwd!r} is not a directory in the container")
    if threading.active_count() != 1:
        raise RuntimeError("the fork server has a thread; a fork would copy it half-run")
    if fingerprint() != started_with:
        raise Stale("an env changed since the fork server started (packages or activation scripts)")
    return args, env, cwd, log


def _become_kernel(args: list[str], env: dict[str, str], cwd: str, log: str) -> None:
    """In the forked child: the kernel's session, output file (``log``: the host's log of the
    kernel, as an exec kernel's), variables, directory and random state; then ipykernel."""
    from kernel_provider.incontainer.launch import run_kernel

    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.setsid()
    if log:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    os.environ.update(env)
    os.chdir(cwd)
    if "PWD" in os.environ:
        os.environ["PWD"] = cwd
    random.seed()
    run_kernel(args)


def _serve_one(listener: socket.socket, conn: socket.socket, started_with: list[list]) -> bool:
    """Fork a kernel, answer a hello, or refuse; False once the server is stale."""
    try:
        request = _read_request(conn)
        if not request:
            return True
        if request.get("hello"):
            _answer(conn)
            return True
        args, env, cwd, log = _check(request, started_with)
    except (ValueError, RuntimeError, OSError, Stale) as err:
        try:
            conn.sendall(json.dumps({"error": str(err)}).encode() + b"\n")
        except OSError:
            pass  # the host is gone: nobody to tell
        return not isinstance(err, Stale)
    sys.stdout.flush()
    sys.stderr.flush()
    if os.fork() == 0:
        code = 1
        try:
            _answer(conn)
            conn.close()
            listener.close()
            _become_kernel(args, env, cwd, log)
            code = 0
        except SystemExit as end:
            code = end.code if isinstance(end.code, int) else (0 if end.code is None else 1)
        except BaseException:  # noqa: BLE001 - the kernel's own crash goes to its log, then it ends
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return True


def _answer(conn: socket.socket) -> None:
    """Our PID (the forked child's, or the server's to a hello), with its credentials attached,
    which the kernel translates into the PID namespace of the host's reader (the PID inside the
    instance means nothing there)."""
    pid = os.getpid()
    credentials = struct.pack("3i", pid, os.getuid(), os.getgid())
    conn.sendmsg(
        [json.dumps({"pid": pid}).encode() + b"\n"], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, credentials)]
    )


def main() -> None:
    """Preload, listen on ``argv[1]`` (bound under a temporary name, then renamed: the host takes
    the path's existence for readiness) and fork a kernel per request, until killed. The files
    read are listed at ``argv[2]`` (optional) once the first requests are answered."""
    from kernel_provider.incontainer.launch import prepare

    # No collections while importing (they cost a tenth of the imports), and none after: the few
    # hundred objects the imports left unreachable (none with a finalizer) are frozen along with
    # the rest, which costs less than the 30 ms a collection of everything takes on a cold start.
    gc.disable()
    path = sys.argv[1]
    read_ahead = sys.argv[2] if len(sys.argv) > 2 else ""
    prepare()
    import importlib

    for module in PRELOAD:
        importlib.import_module(module)
    for module in PRELOAD_IF_PRESENT:
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    started_with = fingerprint()
    # What exists now is shared by every fork: out of the collector's reach, so that no collection
    # in a kernel writes to (and copies) the pages of objects they all share.
    gc.freeze()
    gc.enable()
    signal.signal(signal.SIGCHLD, _reap)
    os.umask(0o077)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    temporary = f"{path}.t"  # short: a socket's path has at most 107 bytes
    if os.path.exists(temporary):
        os.unlink(temporary)  # left by a fork server killed as it started
    listener.bind(temporary)
    listener.listen(64)  # kernels started at once wait in the backlog
    os.rename(temporary, path)
    serving = True
    while serving:
        conn, _ = listener.accept()
        with conn:
            serving = _serve_one(listener, conn, started_with)
        if read_ahead and not select.select([listener], [], [], IDLE)[0]:
            _note_files_read(read_ahead)
            read_ahead = ""
    os.unlink(path)  # stale for good: the host starts a new server


def _note_files_read(path: str) -> None:
    """:func:`note_files_read`, which only the next start's speed depends on."""
    try:
        note_files_read(path)
    except OSError as err:
        print(f"jupyter-condatainer fork server: cannot list the files read in {path}: {err}", file=sys.stderr)


if __name__ == "__main__":
    # Run as a script from LIB_DIR/kernel_provider/incontainer/, before the package is importable.
    sys.path.append(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    main()
