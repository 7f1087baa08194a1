"""CondaTainer's image lock protocol, so the CLI and Jupyter can share images safely.

While a container runs, CondaTainer holds a shared, non-blocking ``flock`` on the
base ``.sif`` and every ``.sqf``; removing or rebuilding an image probes with an
exclusive lock and refuses while anyone holds it. ``.img`` files are not flock'ed by
CondaTainer (Apptainer locks them itself while mounted, with an OFD lock that ``flock``
does not see), so our instances flock their ``.img`` as well: ``condatainer rm`` then
refuses to delete an env a kernel has mounted (tests/test_interop.py). To see a container
that is not ours, the probes ask for Apptainer's lock too (``F_OFD_GETLK``: a read lock
for a ``:ro`` mount, a write lock for ``:rw``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections.abc import Callable, Iterable

from kernel_provider.incontainer.envlock import EnvBusyError

OTHER_CONTAINER = (
    "another container (a kernel of another server, an idle instance a server keeps warm — "
    "'jupyter condatainer instances stop --warm' stops those — or a CondaTainer shell or instance)"
)


def in_use_message(name: str, holder: str = OTHER_CONTAINER, advice: str = "stop it first") -> str:
    """The one wording of "this image is in use": what holds it, then what to do."""
    return f"{name} is in use by {holder}; {advice}"


class ImageBusyError(RuntimeError):
    """An image is held by another process in a way that forbids what we asked."""


def _try_flock(path: str, exclusive: bool) -> int:
    flags = os.O_RDWR if exclusive else os.O_RDONLY
    try:
        fd = os.open(path, flags | os.O_CLOEXEC)
    except OSError as err:
        raise ImageBusyError(f"cannot open {path}: {err.strerror}") from err
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        use = "for writing" if exclusive else "for reading: it is being written or removed"
        raise ImageBusyError(f"{path} is in use; cannot open it {use}") from None
    return fd


FLOCK_STRUCT = "hhqqi"  # struct flock: l_type, l_whence, l_start, l_len, l_pid


def record_lock_conflicts(path: str, lock_type: int) -> bool:
    """Whether another open file holds a record lock on ``path`` that ``lock_type`` (``F_RDLCK``,
    ``F_WRLCK``) on the whole file would conflict with: Apptainer's OFD lock on a mounted ``.img``,
    which ``flock`` does not see. Asks without taking anything (``F_OFD_GETLK``), so a file we
    cannot write is probed too; False for one we cannot open."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        probe = struct.pack(FLOCK_STRUCT, lock_type, os.SEEK_SET, 0, 0, 0)
        answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, probe)
    except OSError:
        return False
    finally:
        os.close(fd)
    return struct.unpack(FLOCK_STRUCT, answer)[0] != fcntl.F_UNLCK


def is_in_use(path: str) -> bool:
    """The LOCK_EX probe CondaTainer runs before removing an image, and the same question put to
    Apptainer's lock: a container that is not ours (``apptainer exec --overlay env.img:ro``) has it."""
    try:
        os.close(_try_flock(path, exclusive=True))
    except ImageBusyError:
        return True
    return record_lock_conflicts(path, fcntl.F_WRLCK)


def is_written(path: str) -> bool:
    """Whether a container has the ``.img`` mounted read-write (Apptainer's write lock), so no
    other may mount it even read-only; ``/proc/locks`` answers for a file we cannot open."""
    return record_lock_conflicts(path, fcntl.F_RDLCK) or is_locked(path, locked_files(write_only=True))


class SharedLocks:
    """Shared flocks on images, held for as long as a container uses them."""

    def __init__(self, paths: Iterable[str]):
        self.paths = list(dict.fromkeys(paths))
        self._fds: list[int] = []

    def acquire(self) -> SharedLocks:
        """Take every lock or none: :class:`ImageBusyError` while an image is being written or removed."""
        try:
            for path in self.paths:
                self._fds.append(_try_flock(path, exclusive=False))
        except ImageBusyError:
            self.release()
            raise
        return self

    def release(self) -> None:
        """Let the images go (the container stopped); safe to call twice."""
        while self._fds:
            os.close(self._fds.pop())


def held_by_anyone(path: str) -> bool:
    """Whether any process holds a lock on the image: CondaTainer's flocks, or Apptainer's own
    lock on a mounted ``.img`` (seen only in ``/proc/locks``). Reads ``/proc/locks``: blocking."""
    return is_locked(path, locked_files()) or is_in_use(path)


def locked_files(proc_locks: str = "/proc/locks", write_only: bool = False) -> set[tuple[int, int]]:
    """(device, inode) of every file someone holds a lock on, read in one go.

    Works for images we cannot open for writing (a shared image directory) and sees
    the CLI's flocks and Apptainer's own lock on a mounted ``.img`` (an OFD lock, ``READ``
    for a read-only mount, ``WRITE`` for a writable one). ``write_only``: only write locks,
    i.e. an ``.img`` that some container may be changing right now.
    """
    found: set[tuple[int, int]] = set()
    try:
        with open(proc_locks, encoding="ascii") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        device = next((f for f in fields if f.count(":") == 2), None)
        if device is None or write_only and "WRITE" not in fields:
            continue
        major, minor, inode = device.split(":")
        try:
            found.add((os.makedev(int(major, 16), int(minor, 16)), int(inode)))
        except ValueError:
            continue
    return found


def is_locked(path: str, locked: set[tuple[int, int]]) -> bool:
    """Whether ``path`` is among ``locked`` (from :func:`locked_files`: one read for many images)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) in locked


class ImageWriteHold:
    """An open-file-description write lock on a whole ``.img``: Apptainer's own lock.

    Apptainer takes an OFD lock (write for ``:rw``, read for ``:ro``) on an ext3 overlay while
    it is mounted, and refuses to mount an image someone else holds for writing. Holding this
    while we change or delete an env means no container can mount it meanwhile, and taking it
    without waiting is also the check that none has it mounted now. The file is opened with
    ``O_NOFOLLOW``: the caller passes the resolved path it checked.
    """

    def __init__(self, path: str, holder: Callable[[str], str] = lambda path: OTHER_CONTAINER):
        self.path = path
        self.holder = holder  # who has the image open, in words, for the refusal
        self._fd: int | None = None

    def acquire(self) -> ImageWriteHold:
        """Take the lock without waiting; :class:`EnvBusyError` when a container has the image mounted."""
        fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack(FLOCK_STRUCT, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise EnvBusyError(in_use_message(os.path.basename(self.path), self.holder(self.path))) from None
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        """Let containers mount the image again; safe to call twice."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ImageWriteHold:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
