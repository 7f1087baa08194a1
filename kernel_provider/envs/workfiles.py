"""Hidden work files next to the images: how every env operation stays all-or-nothing.

An operation builds its result in a hidden file named after its builder (``.NAME.PID-START.rand.tmp.img``,
also ``.sqf``, ``.stage`` and the files a tool makes next to them) and commits with one rename or
link. A dead builder's work files are garbage: :meth:`EnvOperations.recover` removes them.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from pathlib import Path

from kernel_provider.host.state import Owner


def allocated_bytes(path: str) -> int:
    """Disk blocks a (sparse) image really uses: what a copy of it costs."""
    return os.stat(path).st_blocks * 512


def work_path(target: Path) -> Path:
    """A hidden work file next to ``target``, named after its builder (see :meth:`EnvOperations.recover`)."""
    owner = Owner.current()
    return target.with_name(f".{target.stem}.{owner.pid}-{owner.start_time}.{secrets.token_hex(3)}.tmp{target.suffix}")


def remove_work_files(work: Path) -> None:
    """A work file and whatever a tool made next to it (``apptainer overlay create`` makes ``….ext3``)."""
    for path in work.parent.glob(_glob_escape(work.name) + "*"):
        path.unlink(missing_ok=True)


def _glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def fsync_file(path: Path) -> None:
    """Put a finished work file on disk before the rename or link that commits it."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or link in ``path`` durable before reporting it done."""
    fsync_file(path)


def builder_of(filename: str) -> Owner | None:
    """The builder recorded in a work file's name (``.x.PID-START.rand.tmp.img`` and the files beside it)."""
    match = re.search(r"\.(\d+)-(\d+)\.[0-9a-f]+\.tmp\.(?:img|sqf|stage)", filename)
    if not match:
        return None
    return Owner(int(match.group(1)), int(match.group(2)), socket.gethostname())


def remove_half_placed_sidecar(work: Path) -> None:
    """A freeze links its sidecar, then its ``.sqf``: a builder killed between the two leaves a
    sidecar (the same inode as its work file) without its image, which goes too."""
    if not work.name.endswith(".tmp.sqf.env"):
        return
    stem = work.name[1:].split(".", 1)[0]
    for sidecar in work.parent.glob(_glob_escape(stem) + "*.sqf.env"):
        image = sidecar.with_name(sidecar.name[: -len(".env")])
        if not image.exists() and os.path.samefile(sidecar, work):
            sidecar.unlink()
