"""Bind paths: CondaTainer's defaults and its de-duplication rules.

Binds are fixed when an instance starts (``exec`` into an instance ignores new ones),
so everything a kernel will ever need — its working directory, the connection-file
directory, the image directories — must be in this list up front.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping


def default_binds(
    environ: Mapping[str, str],
    cwd: str,
    image_dirs: Iterable[str],
    exists: Callable[[str], bool] = os.path.isdir,
) -> list[str]:
    """CondaTainer's default binds: cwd, ``$SCRATCH``, ``$TMPDIR``, the scheduler's
    node-local tmp and the image directories — those that exist (Apptainer refuses a
    missing bind source)."""
    candidates = [cwd, environ.get("SCRATCH", ""), environ.get("TMPDIR", "")]
    candidates += [environ.get("SLURM_TMPDIR", ""), environ.get("_CONDOR_SCRATCH_DIR", "")]
    candidates += list(image_dirs)
    return [path for path in candidates if path and exists(path)]


def dedupe_binds(binds: Iterable[str], realpath: Callable[[str], str] = os.path.realpath) -> list[str]:
    """Resolve symlinks, drop repeats and paths already covered by a parent bind.

    ``src:dst`` pairs are deliberate remaps and are always kept.
    """
    seen: set[str] = set()
    resolved: list[tuple[str, list[str]]] = []
    for bind in binds:
        if not bind:
            continue
        parts = bind.split(":", 2)
        host = realpath(os.path.abspath(parts[0]))
        if host in seen:
            continue
        seen.add(host)
        resolved.append((host, parts[1:]))

    all_hosts = [host for host, rest in resolved]
    kept = []
    for host, rest in resolved:
        if not rest and any(_is_inside(host, other) for other in all_hosts if other != host):
            continue
        kept.append(":".join([host, *rest]))
    return kept


def _is_inside(path: str, parent: str) -> bool:
    return path.startswith(parent.rstrip("/") + "/")
