"""The per-env lock that serialises package operations: the server, the CLI and the magic.

Stdlib only: the ``%condatainer`` magic takes it inside the container (the lock directory is bound
into instances), the server and the CLI on the host, all with the same protocol.
"""

from __future__ import annotations

import fcntl
import hashlib
import os


def lock_dir(state_dir: str) -> str:
    """Where the env locks of a CondaTainer state directory live."""
    return os.path.join(state_dir, "jupyter-condatainer", "locks")


def private_lock_dir(state_dir: str) -> str:
    """The directory of the env locks, made user-only (0700): no one else may take our locks."""
    return _private_dir(lock_dir(state_dir))


def _private_dir(directory: str) -> str:
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if os.stat(directory).st_mode & 0o077:
        os.chmod(directory, 0o700)  # made by an older version, or by someone's umask
    return directory


def env_lock_path(state_dir: str, image_path: str) -> str:
    """The lock file serialising package operations on one env (server, CLI and magic).

    Taken with :class:`EnvLock` on the host and in the kernel (the directory is bound into
    instances), so both follow the same create/lock/check/unlink protocol.
    """
    digest = hashlib.sha256(os.path.realpath(image_path).encode()).hexdigest()[:16]
    return os.path.join(lock_dir(state_dir), f"{digest}.lock")


class EnvBusyError(RuntimeError):
    """Another operation, a kernel or the CondaTainer CLI is using the env."""


class EnvLock:
    """An exclusive ``flock`` on a private lock file that is removed when released.

    The directory is 0700 and the file 0600, so no other user can take the lock and block
    our installs. Removing a lock file is safe with the classic check: after locking, the
    path must still name the locked inode (a releaser may have unlinked it meanwhile);
    otherwise lock the new file. The releaser unlinks while it still holds the lock.
    """

    def __init__(self, path: str):
        self.path = path
        self._fd: int | None = None

    def acquire(self, blocking: bool = False) -> EnvLock:
        """Take the lock; :class:`EnvBusyError` at once when someone holds it and not ``blocking``."""
        _private_dir(os.path.dirname(self.path))
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                raise EnvBusyError("another operation on this env is running; try again when it ends") from None
            if self._names(fd):
                self._fd = fd
                return self
            os.close(fd)  # unlinked by its previous holder between our open and flock: retry

    def _names(self, fd: int) -> bool:
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)

    def release(self) -> None:
        """Unlink the lock file while still holding it, then let go (the order the class's check relies on)."""
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def fileno(self) -> int:
        """The locked descriptor: a child given it holds the lock for as long as it lives."""
        if self._fd is None:
            raise ValueError("the lock is not held")
        return self._fd

    def is_taken(self) -> bool:
        """Whether someone holds the lock now (probing takes and releases it when it is free)."""
        try:
            self.acquire()
        except EnvBusyError:
            return True
        self.release()
        return False

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def __enter__(self) -> EnvLock:
        return self.acquire(blocking=True) if self._fd is None else self

    def __exit__(self, *exc) -> None:
        self.release()
