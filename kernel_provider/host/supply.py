"""ipykernel for container Pythons that lack it, built on the host once per version.

``pip install --target`` with ``--python-version``/``--abi``/``--platform`` downloads
wheels matching the *container's* Python, not the host's. The result lives in the
user's cache and is bound read-only into every instance (see ``kernel_provider.incontainer.launch``).
"""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from kernel_provider.host.process import InstanceError, run

BUILD_TIMEOUT = 600.0
LOCK_POLL_INTERVAL = 0.2


def supply_root() -> Path:
    """Where the host-built ipykernels live, one ``cp3XY`` each; bound read-only into every instance."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    root = Path(cache) / "jupyter-condatainer" / "ipykernel"
    root.mkdir(parents=True, exist_ok=True)
    return root


def package_dir() -> str:
    """The host directory of the ``kernel_provider`` package, bound into containers for the launcher and magic."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tag(version: tuple[int, int]) -> str:
    return f"cp{version[0]}{version[1]}"


def manylinux_platforms(glibc: str, machine: str) -> list[str]:
    """Every manylinux tag the container's glibc can run (pip does not infer older ones)."""
    try:
        newest = int(glibc.split(".")[1])
    except (IndexError, ValueError):
        newest = 17
    return [f"manylinux2014_{machine}"] + [f"manylinux_2_{minor}_{machine}" for minor in range(17, max(newest, 17) + 1)]


def pip_argv(version: tuple[int, int], target: str, glibc: str = "", machine: str = "") -> list[str]:
    """pip command that installs ipykernel wheels for a CPython ``version`` into ``target``."""
    platforms = manylinux_platforms(glibc, machine or platform.machine())
    argv = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile"]
    argv += ["--target", target, "--only-binary=:all:", "--implementation", "cp"]
    argv += ["--python-version", f"{version[0]}.{version[1]}", "--abi", _tag(version)]
    for name in platforms:
        argv += ["--platform", name]
    return [*argv, "ipykernel"]


@asynccontextmanager
async def build_lock(path: str) -> AsyncIterator[None]:
    """Hold the file lock that lets one process (and one task) build a version at a time.

    Every acquire attempt and the release run on the event loop's thread: filelock's
    locks are thread-local, so a lock taken in a worker thread and released on the loop
    stays held and the next build of that version waits forever. Polling without
    blocking keeps the loop free and lets a cancelled waiter leave without a stray lock.
    """
    lock = FileLock(path)
    while True:
        try:
            lock.acquire(timeout=0)
            break
        except Timeout:
            await asyncio.sleep(LOCK_POLL_INTERVAL)
    try:
        yield
    finally:
        lock.release()


async def _pip_install(version: tuple[int, int], target: str, glibc: str) -> None:
    """Run pip into ``target``; an :class:`InstanceError` with pip's message when it fails."""
    try:
        result = await run(pip_argv(version, target, glibc), BUILD_TIMEOUT, env=dict(os.environ))
        failure = result.stderr.strip()[-2000:] if result.returncode != 0 else ""
    except asyncio.TimeoutError:
        failure = f"pip did not finish within {BUILD_TIMEOUT:.0f} s"
    if failure:
        raise InstanceError(
            f"the container's Python {version[0]}.{version[1]} has no ipykernel, and building one on the "
            f"host failed:\n{failure}\nInstall ipykernel into the environment instead."
        )


def is_supplied(version: tuple[int, int]) -> bool:
    """Whether ipykernel for this Python version is built already (the next start will not download it)."""
    return (supply_root() / _tag(version)).is_dir()


async def ensure_ipykernel(version: tuple[int, int], glibc: str = "") -> Path:
    """The supplied ipykernel for ``version``, building it (once, under a lock) if needed."""
    target = supply_root() / _tag(version)
    if target.is_dir():
        return target
    async with build_lock(str(target) + ".lock"):
        if target.is_dir():
            return target
        staging = tempfile.mkdtemp(prefix=f".{_tag(version)}.", dir=target.parent)
        try:
            await _pip_install(version, staging, glibc)
        except BaseException:
            # A partial download can be a hundred MB: remove it, off the loop.
            await asyncio.to_thread(shutil.rmtree, staging, ignore_errors=True)
            raise
        os.chmod(staging, 0o755)
        os.replace(staging, target)
        return target
