"""What the panel polls cheaply: a generation that changes with the images, kernels and
instances, and whether a conda channel can be reached.

Changes made outside the server (the ``%condatainer`` magic in a kernel, the CLI, another
server) show in the panel within seconds: it asks ``GET condatainer/api/status`` — a few
``stat`` calls, no container, no scan of the images' contents — and reloads only when the
generation changed. The channel check lets the panel say *before* "New env" that no channel
is reachable, instead of a create job failing after seconds with a DNS error.
"""

from __future__ import annotations

import hashlib
import os
import socket
import urllib.parse
from collections.abc import Iterable
from pathlib import Path

from jupyter_core.paths import jupyter_data_dir

from kernel_provider.envs.jobs import Job
from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.incontainer.diagnosis import NO_CHANNEL, diagnose
from kernel_provider.incontainer.history import channel_alias


def _stamps(directory: Path, pattern: str = "*") -> list[tuple[str, int, int]]:
    """(name, size, mtime) of a directory and of what ``pattern`` matches in it; nothing when missing."""
    try:
        entries = [directory, *directory.glob(pattern)]
        return [(p.name, *(lambda st: (st.st_size, st.st_mtime_ns))(p.stat())) for p in entries]
    except OSError:
        return []


def generation(config: CondaTainerConfig) -> str:
    """A token that changes whenever an image, a kernelspec or an instance of this user changes.

    An install in place (through a kernel's instance) writes the ``.img`` (its mtime); a change
    on a copy renames it (the directory's mtime); kernelspecs and instance state files are
    files of their own. Blocking (stat calls): call it in a thread.
    """
    stamps: list = []
    for directory in config.image_dirs:
        stamps += _stamps(Path(directory), "*.img")
    stamps += _stamps(Path(jupyter_data_dir()) / "kernels", "condatainer-*/kernel.json")
    stamps += _stamps(config.instance_state_dir, "*.json")
    return hashlib.sha256(repr(stamps).encode()).hexdigest()[:16]


def _reachable(url: str) -> bool:
    """Whether a channel alias can be reached: a local directory exists, a host name resolves."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return os.path.isdir(parsed.path)
    if not parsed.hostname:
        return False
    try:
        socket.getaddrinfo(parsed.hostname, parsed.port or 443, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return True


def channel_problem(config: CondaTainerConfig, jobs: Iterable[Job]) -> str:
    """Why new envs and installs will not find packages, in words, or "" when nothing says so.

    A configured channel alias is checked directly. Without one the solver uses its default
    channels on the network; that they cannot be reached is learnt from the newest job that
    failed for it (until a job succeeds again). Blocking (name lookup): call it in a thread.
    """
    alias = channel_alias(config.container_env)
    if alias:
        if _reachable(alias):
            return ""
        return (
            f"{NO_CHANNEL}: the server's channel alias {alias} cannot be reached. Set MAMBA_CHANNEL_ALIAS "
            "to a reachable mirror (or a local file:// channel directory) in the server's environment "
            "and restart it, or type a file:// channel in the form"
        )
    for job in sorted(jobs, key=lambda j: j.finished or 0, reverse=True):
        if job.state == "succeeded" and job.kind in ("create", "install", "update"):
            return ""
        found = diagnose(job.error or "") if job.state == "failed" else None
        if found is not None and found.headline == NO_CHANNEL:
            return f"{found.line} (a {job.kind} job failed for this)"
    return ""
