"""Which Python a stack's PATH gives, and whether it has ipykernel: probed once per stack.

The answer is cached on disk, keyed by the images' identities (path, size, mtime) and PATH, so
only the first start of a stack pays for the probe; an install into the env changes its ``.img``
and so the key.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from kernel_provider.host.process import InstanceError, run
from kernel_provider.host.runtime import write_private
from kernel_provider.incontainer.diagnosis import explain
from kernel_provider.model import command
from kernel_provider.model.plan import ContainerPlan

PROBE_TIMEOUT = 120.0
PROBE_CACHE_SIZE = 200
PROBE_SCRIPT = (
    "import importlib.util, json, platform, sys; print(json.dumps({'executable': sys.executable, "
    "'version': list(sys.version_info[:2]), 'glibc': platform.libc_ver()[1], "
    "'ipykernel': importlib.util.find_spec('ipykernel') is not None}))"
)


class NoPythonError(InstanceError):
    """The stack has no ``python`` on its PATH."""


@dataclass(frozen=True)
class PythonInfo:
    """The stack's Python: whether ipykernel must be supplied, and which wheels would fit it."""

    executable: str
    version: tuple[int, int]
    has_ipykernel: bool
    glibc: str = ""


def cache_path() -> Path:
    """The probe cache, in the user's cache directory: shared by every server of this user."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "jupyter-condatainer" / "python-probes.json"


def _cache_key(plan: ContainerPlan) -> str:
    identities = []
    for image in (plan.base_image, *plan.overlays):
        try:
            st = os.stat(image.path)
            identities.append([image.path, st.st_size, st.st_mtime_ns])
        except OSError:
            identities.append([image.path])
    return hashlib.sha256(json.dumps([identities, plan.env_dict.get("PATH", "")]).encode()).hexdigest()[:16]


def _read_cache() -> dict:
    try:
        return json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _recall(plan: ContainerPlan) -> tuple[str, dict | None]:
    """The cache key of ``plan`` and what the cache holds for it."""
    key = _cache_key(plan)
    return key, _read_cache().get(key)


def remember(key: str, entry: dict) -> None:
    """Add one probe result, read-modify-write under a lock, replacing the file atomically.

    Kernel starts of one server (each in a worker thread) and of other servers of this
    user update the file at once; without the lock one's entry overwrites another's.
    The lock blocks, so call this off the event loop.
    """
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cache = _read_cache()
        cache.pop(key, None)  # newest last: the size cap drops the oldest
        cache[key] = entry
        write_private(path, json.dumps(dict(list(cache.items())[-PROBE_CACHE_SIZE:])))


def no_python_message(overlays: str) -> str:
    """The refusal for a stack without ``python`` (``overlays``: its overlay names), with the fix."""
    return (
        f"no `python` on the container PATH of this stack ({overlays or 'base image only'}). Add a "
        "Python overlay (e.g. python/3.11) or an env .img with python to the kernel's overlays."
    )


async def probe_python(
    apptainer: str, instance_name: str, env_file: str, plan: ContainerPlan, oci: bool = False
) -> PythonInfo:
    """Probe (or recall) the Python of a running instance of ``plan``; ``oci``: SingularityCE's
    OCI mode has no instance, so the probe is a container of its own."""
    key, cached = await asyncio.to_thread(_recall, plan)  # stats the images, reads the cache file
    if cached:
        return PythonInfo(**{**cached, "version": tuple(cached["version"])})
    probe = ["python", "-c", PROBE_SCRIPT]
    if oci:
        argv = command.oneshot_exec_argv(apptainer, plan, env_file, probe, oci=True)
    else:
        argv = command.instance_exec_argv(apptainer, instance_name, env_file, probe)
    result = await run(argv, PROBE_TIMEOUT)
    if result.returncode != 0:
        if "not found" in result.stderr:
            raise NoPythonError(no_python_message(", ".join(o.name for o in plan.overlays)))
        raise InstanceError(explain(f"probing python in {instance_name}", result.stderr))
    python = parse_probe(result.stdout)
    await asyncio.to_thread(remember, key, asdict(python))
    return python


def parse_probe(stdout: str) -> PythonInfo:
    """The probe script's answer: the last line of its output, JSON."""
    info = json.loads(stdout.strip().splitlines()[-1])
    return PythonInfo(info["executable"], tuple(info["version"]), info["ipykernel"], info["glibc"])
