"""Disk space of envs: how full each ``.img`` is, how much the image directories have left, and
growing an env that is nearly full (as ``condatainer overlay resize`` does).

An env's fullness comes from its ext3 superblock (block size, block count, free blocks: what
``tune2fs -l`` prints), read straight from the file: no container, no mount. While a container
has the env mounted the superblock's free count lags behind (ext3 writes it back at unmount),
so the listing marks such rows ``in_use``.

Growing follows CondaTainer's ``overlay resize`` (``e2fsck -pf``, extend the file, ``resize2fs``,
``e2fsck -pf`` again), on a copy that replaces the env only when every step succeeded
(:meth:`EnvOperations.change_on_copy`): a failure or a crash leaves the env as it was. It is
refused while any container has the env mounted.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

from kernel_provider.envs.operations import MB, EnvOperations, Reporter
from kernel_provider.host.debugfs import find_sbin_tool
from kernel_provider.host.locks import held_by_anyone, in_use_message, is_locked, locked_files
from kernel_provider.host.process import failure, run_logged
from kernel_provider.incontainer.envlock import EnvBusyError
from kernel_provider.model.overlays import OverlayError

EXT_MAGIC = 0xEF53
NEARLY_FULL = 0.9  # from this share used, the panel suggests growing the env


class DiskError(OverlayError):
    """An env's filesystem could not be read or grown; the message says why and what to do."""


@dataclass(frozen=True)
class FsUsage:
    """An ext3 filesystem's size and use, from its superblock (bytes)."""

    total: int
    free: int
    reserved: int = 0  # of the free blocks, those kept for root (mke2fs -m; CondaTainer's 3 %)

    @property
    def used(self) -> int:
        """Bytes in use (the superblock's blocks minus its free blocks)."""
        return self.total - self.free

    @property
    def available(self) -> int:
        """Bytes a change can count on: the free ones but root's reserve (``df``'s "Avail")."""
        return max(self.free - self.reserved, 0)


def read_usage(image: str) -> FsUsage:
    """The superblock of the ext2/3/4 filesystem in ``image`` (1024 bytes in). Blocking (reads the file)."""
    with open(image, "rb") as handle:
        handle.seek(1024)
        block = handle.read(1024)
    if len(block) < 1024 or struct.unpack_from("<H", block, 56)[0] != EXT_MAGIC:
        raise DiskError(f"{os.path.basename(image)} holds no ext3 filesystem; is it an env overlay?")
    blocks_lo, reserved_lo, free_lo = struct.unpack_from("<III", block, 4)
    block_size = 1024 << struct.unpack_from("<I", block, 24)[0]
    return FsUsage(total=blocks_lo * block_size, free=free_lo * block_size, reserved=reserved_lo * block_size)


@dataclass(frozen=True)
class EnvDisk:
    """One env's row in ``GET /condatainer/api/disk`` (bytes)."""

    name: str
    path: str
    size: int  # the file's length: the most the env can hold
    allocated: int  # disk blocks the (sparse) file really takes
    fs_total: int
    fs_used: int
    fs_free: int
    in_use: bool  # mounted now: fs_used may lag behind
    nearly_full: bool


@dataclass(frozen=True)
class DirDisk:
    """An image directory's file system (bytes)."""

    path: str
    total: int
    free: int


def usage(operations: EnvOperations) -> dict:
    """Every env's use and every image directory's free space. Blocking: call it in a thread."""
    locked = locked_files()
    ours = {o.path for i in operations.instances.instances.values() for o in i.plan.overlays}
    envs = []
    for name, overlay in sorted(operations.catalog().by_name.items()):
        if overlay.kind != "img" or any(e.path == overlay.path for e in envs):
            continue
        try:
            stat = os.stat(overlay.path)
            fs = read_usage(overlay.path)
        except (OSError, DiskError):
            continue
        envs.append(
            EnvDisk(
                name=name,
                path=overlay.path,
                size=stat.st_size,
                allocated=stat.st_blocks * 512,
                fs_total=fs.total,
                fs_used=fs.used,
                fs_free=fs.free,
                in_use=overlay.path in ours or is_locked(overlay.path, locked),
                nearly_full=fs.total > 0 and fs.used >= NEARLY_FULL * fs.total,
            )
        )
    dirs = []
    for directory in operations.config.image_dirs:
        try:
            disk = shutil.disk_usage(directory)
        except OSError:
            continue
        dirs.append(DirDisk(path=directory, total=disk.total, free=disk.free))
    return {"envs": [asdict(e) for e in envs], "image_dirs": [asdict(d) for d in dirs]}


def check_grow(operations: EnvOperations, name: str, size_mb: int) -> str:
    """Refuse a grow before it is queued: not an env, not bigger, too big, in use, no room. Blocking.

    Returns the image file that will grow.
    """
    overlay = operations.find_env(name)
    image = operations.resolve_image(overlay)
    if not isinstance(size_mb, int) or isinstance(size_mb, bool):
        raise ValueError('size_mb must be a whole number of MiB, e.g. {"size_mb": 2048}')
    current = read_usage(image).total
    if size_mb * MB <= current:
        raise ValueError(
            f"{name} is {current // MB} MiB; give a bigger size to grow it (shrinking is not offered here)"
        )
    if size_mb > operations.config.max_env_size_mb:
        raise ValueError(
            f"{size_mb} MiB is over the largest env size allowed here ({operations.config.max_env_size_mb} MiB)"
        )
    if operations.mounted_by(overlay):
        raise EnvBusyError(in_use_message(name, "a running kernel of this server", "shut that kernel down first"))
    if held_by_anyone(image):
        raise EnvBusyError(in_use_message(name))
    growth = size_mb * MB - os.stat(image).st_blocks * 512
    operations.check_free_space(os.path.dirname(image), max(growth, 0), f"growing {name} to {size_mb} MiB")
    return image


async def grow(operations: EnvOperations, report: Reporter, name: str, size_mb: int) -> str:
    """Grow the env ``name`` to ``size_mb`` MiB, on a copy that replaces it only when it worked."""
    image = await asyncio.to_thread(check_grow, operations, name, size_mb)
    tools = {tool: find_sbin_tool(tool) for tool in ("e2fsck", "resize2fs")}
    missing = [tool for tool, path in tools.items() if path is None]
    if missing:
        raise DiskError(f"growing an env needs {' and '.join(missing)} (e2fsprogs) on the server's host; install it")
    overlay = operations.find_env(name)

    async def check(work: Path, when: str) -> None:
        # e2fsck: 0 clean, 1 errors corrected; anything else leaves the copy unusable.
        rc, lines = await run_logged([tools["e2fsck"], "-p", "-f", str(work)], report.log, die_with_parent=True)
        if rc > 1:
            raise DiskError(failure(f"checking {name}'s filesystem {when} (e2fsck)", lines) + "\nThe env is unchanged.")

    async def grow_copy(work: Path) -> None:
        report.step(0.3, "checking the filesystem")
        await check(work, "before growing it")
        report.step(0.5, f"growing the filesystem to {size_mb} MiB")
        await asyncio.to_thread(os.truncate, work, size_mb * MB)
        rc, lines = await run_logged(
            [tools["resize2fs"], "-p", str(work), f"{size_mb}M"], report.log, die_with_parent=True
        )
        if rc != 0:
            raise DiskError(failure(f"growing {name} (resize2fs)", lines) + "\nThe env is unchanged.")
        report.step(0.8, "checking the grown filesystem")
        await check(work, "after growing it")

    lock = operations.try_lock(overlay.path)
    try:
        with operations.journal.record("resize", name, image):
            await operations.change_on_copy(report, "resize", overlay, grow_copy)
    finally:
        lock.release()
    return f"{name} grown to {size_mb} MiB"
