"""Intent records of running env operations, so a restarted server can say what became of them.

An operation writes a small record (what, on which image, the image's inode, who runs it) before
it starts and removes it when it ends, whatever the end. A record whose writer died tells the
next server that an operation was interrupted. Since every operation commits with one rename,
link or unlink, comparing the image with the record says which of the two states the image is in:
as before, or finished.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from kernel_provider.host.runtime import write_private
from kernel_provider.host.state import Owner

CREATING = ("create", "freeze")  # the image appears at the commit


@dataclass(frozen=True)
class Entry:
    """One intent record: the operation, its image (and the image's inode before), who runs it."""

    operation: str
    name: str
    path: str
    inode: int | None  # the image's before the operation (None: it does not exist yet)
    pid: int
    start_time: int
    host: str
    in_place: bool = False  # ran in a kernel's instance on the mounted env: no commit to look at

    def outcome(self) -> str:
        """The user's answer: which of the two states the image is in now."""
        if self.in_place:
            return (
                f"the {self.operation} of {self.name} was running inside a kernel's container when the server "
                "stopped; it goes on there to its end (that container is stopped only after it): see "
                f"{self.name}'s history for the result"
            )
        inode = _inode_of(self.path)
        what = f"the {self.operation} of {self.name} was interrupted (the server stopped)"
        if self.operation in CREATING:
            return f"{what}; it had finished: {self.name} is complete" if inode else f"{what}; nothing was created"
        if inode == self.inode:
            return f"{what}; {self.name} is as it was before"
        if self.operation == "delete":
            return f"{what}; it had finished: {self.name} is deleted"
        return f"{what}; it had finished: {self.name} holds the finished result"


def _inode_of(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


class Journal:
    """The records of one state directory (private to the user)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    @contextmanager
    def record(self, operation: str, name: str, path: str, in_place: bool = False) -> Iterator[Entry]:
        """Keep a record for as long as the operation runs."""
        owner = Owner.current()
        entry = Entry(operation, name, path, _inode_of(path), owner.pid, owner.start_time, owner.host, in_place)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        file = self.directory / f"{owner.pid}-{owner.start_time}-{secrets.token_hex(4)}.json"
        write_private(file, json.dumps(asdict(entry)))  # atomic: readers never see half a record
        try:
            yield entry
        finally:
            file.unlink(missing_ok=True)

    def interrupted(self) -> Iterator[tuple[Path, Entry]]:
        """Records whose writer is gone (with their files, for the caller to remove)."""
        for file in sorted(self.directory.glob("*.json")) if self.directory.is_dir() else ():
            try:
                entry = Entry(**json.loads(file.read_text()))
            except (OSError, ValueError, TypeError):
                continue  # not ours to judge
            if not Owner(entry.pid, entry.start_time, entry.host).is_alive():
                yield file, entry
