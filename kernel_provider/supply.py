"""ipykernel for container Pythons that lack it, built on the host once per version.

``pip install --target`` with ``--python-version``/``--abi``/``--platform`` downloads
wheels matching the *container's* Python, not the host's. The result lives in the
user's cache and is bound read-only into every instance (see ``container_launch``).
"""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

from filelock import FileLock

from .instance import InstanceError, run

CONTAINER_SUPPLY_DIR = "/opt/jupyter-condatainer/ipykernel"
CONTAINER_LIB_DIR = "/opt/jupyter-condatainer/lib"
BUILD_TIMEOUT = 600.0


def supply_root() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    root = Path(cache) / "jupyter-condatainer" / "ipykernel"
    root.mkdir(parents=True, exist_ok=True)
    return root


def package_dir() -> str:
    """The host directory of this package, bound into containers for the launcher and magic."""
    return os.path.dirname(os.path.abspath(__file__))


def tag(version: tuple[int, int]) -> str:
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
    argv += ["--python-version", f"{version[0]}.{version[1]}", "--abi", tag(version)]
    for name in platforms:
        argv += ["--platform", name]
    return [*argv, "ipykernel"]


async def ensure_ipykernel(version: tuple[int, int], glibc: str = "") -> Path:
    """The supplied ipykernel for ``version``, building it (once, under a lock) if needed."""
    target = supply_root() / tag(version)
    if target.is_dir():
        return target
    lock = FileLock(str(target) + ".lock")
    await asyncio.to_thread(lock.acquire)
    try:
        if target.is_dir():
            return target
        staging = tempfile.mkdtemp(prefix=f".{tag(version)}.", dir=target.parent)
        result = await run(pip_argv(version, staging, glibc), BUILD_TIMEOUT, env=dict(os.environ))
        if result.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise InstanceError(
                f"the container's Python {version[0]}.{version[1]} has no ipykernel, and building one on the "
                f"host failed:\n{result.stderr.strip()[-2000:]}\nInstall ipykernel into the environment instead."
            )
        os.chmod(staging, 0o755)
        os.replace(staging, target)
        return target
    finally:
        lock.release()
