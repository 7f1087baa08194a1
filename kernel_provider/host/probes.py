"""Facts about images read from disk: the real :class:`~kernel_provider.model.plan.HostFacts`.

Reading inside a ``.sqf`` takes ``unsquashfs`` (no mount, a few ms); the owner of an
``.img``'s ``upper/`` takes ``debugfs``. Results are cached per file identity
(path, size, mtime), so a kernel restart or a listing does not pay twice.
"""

from __future__ import annotations

import functools
import logging
import os
import pwd
import re
import shutil
import subprocess
from typing import Any

from kernel_provider.host.debugfs import find_debugfs
from kernel_provider.model.envfile import (
    BUILD_SCRIPT_NAME,
    OverlayEnv,
    parse_build_script,
    parse_sidecar,
)
from kernel_provider.model.overlays import Overlay

log = logging.getLogger(__name__)
_QUIET: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.DEVNULL, "env": {**os.environ, "LC_ALL": "C"}}


def _identity(path: str) -> tuple[str, int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return path, -1, -1
    return path, st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=4096)
def _sqf_listing(identity: tuple[str, int, int], inner: str) -> tuple[str, ...] | None:
    """Paths under ``inner`` in the archive; None when unsquashfs cannot tell."""
    if not shutil.which("unsquashfs"):
        return None
    result = subprocess.run(["unsquashfs", "-l", "-d", "", identity[0], inner], check=False, **_QUIET)
    if result.returncode != 0:
        return None
    return tuple(line.strip() for line in result.stdout.decode(errors="replace").splitlines() if line.startswith("/"))


@functools.lru_cache(maxsize=4096)
def _sqf_cat(identity: tuple[str, int, int], inner: str) -> str:
    if not shutil.which("unsquashfs"):
        return ""
    result = subprocess.run(["unsquashfs", "-cat", identity[0], inner], check=False, **_QUIET)
    return result.stdout.decode(errors="replace") if result.returncode == 0 else ""


def _debugfs(path: str, request: str) -> bytes | None:
    """What ``debugfs -R REQUEST`` prints for an ext3 image, read without mounting it; None
    without debugfs or when it fails."""
    debugfs = find_debugfs()
    if not debugfs:
        return None
    result = subprocess.run([debugfs, "-R", request, path], check=False, **_QUIET)
    return result.stdout if result.returncode == 0 else None


@functools.lru_cache(maxsize=1024)
def _upper_owner(identity: tuple[str, int, int]) -> int | None:
    match = re.search(rb"User:\s+(\d+)", _debugfs(identity[0], "stat /upper") or b"")
    return int(match.group(1)) if match else None


SUBUID_FILE = "/etc/subuid"
SUBGID_FILE = "/etc/subgid"
SUBID_COUNT = 65536


def _subid_ranges(path: str) -> list[tuple[str, int, int]]:
    """``(user or uid, start, count)`` of each line of an ``/etc/subuid``-style file."""
    ranges = []
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                fields = line.strip().split(":")
                if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
                    ranges.append((fields[0], int(fields[1]), int(fields[2])))
    except OSError:
        pass
    return ranges


def _has_subid_entry(user: str, uid: int, path: str) -> bool:
    return any(owner in (user, str(uid)) and count > 0 for owner, _, count in _subid_ranges(path))


def unprivileged_userns() -> bool:
    """Whether ordinary users may create user namespaces (Apptainer's non-setuid mode)."""
    for path, off in (("/proc/sys/user/max_user_namespaces", "0"), ("/proc/sys/kernel/unprivileged_userns_clone", "0")):
        try:
            with open(path, encoding="ascii") as handle:
                if handle.read().strip() == off:
                    return False
        except OSError:
            continue
    return True


def user_name(uid: int) -> str:
    """The login name ``/etc/subuid`` lines and messages use; the uid as text when it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def missing_subids(uid: int) -> str | None:
    """None when ``uid`` is root or has subuid and subgid ranges; else what an admin must add."""
    user = user_name(uid)
    if uid == 0 or all(_has_subid_entry(user, uid, path) for path in (SUBUID_FILE, SUBGID_FILE)):
        return None
    ends = [start + count for path in (SUBUID_FILE, SUBGID_FILE) for _, start, count in _subid_ranges(path)]
    first = max([100000, *ends])
    last = first + SUBID_COUNT - 1
    return (
        f"{user} has no /etc/subuid entry; an admin must add '{user}:{first}:{SUBID_COUNT}' to /etc/subuid "
        f"and /etc/subgid (usermod --add-subuids {first}-{last} --add-subgids {first}-{last} {user})"
    )


def fakeroot_problem(uid: int) -> str | None:
    """Why ``apptainer --fakeroot`` cannot work for ``uid``, or None when it can.

    With ``/etc/subuid`` and ``/etc/subgid`` ranges Apptainer maps a full id range. Without
    them Apptainer (>= 1.1) falls back to a root-mapped user namespace, which needs
    unprivileged user namespaces; when those are off too, fakeroot is impossible.
    """
    advice = missing_subids(uid)
    if advice is None or unprivileged_userns():
        return None
    return f"{advice}; unprivileged user namespaces are disabled here, so Apptainer has no fallback"


def read_sidecar(overlay: Overlay) -> OverlayEnv:
    """The overlay's ``.env`` sidecar (``#WHATIS``, variables, notes); empty when it has none."""
    try:
        with open(overlay.sidecar_path, encoding="utf-8", errors="replace") as handle:
            return parse_sidecar(handle.read(), overlay.app_root, overlay.sidecar_path)
    except FileNotFoundError:
        return OverlayEnv()


class ImageProbe:
    """:class:`~kernel_provider.model.plan.HostFacts` backed by the real files."""

    def overlay_env(self, overlay: Overlay) -> OverlayEnv:
        """The overlay's variables as a container gets them; skipped lines are logged."""
        embedded = OverlayEnv()
        if overlay.kind == "sqf":
            inner = f"cnt/{overlay.name}/{BUILD_SCRIPT_NAME}"
            embedded = parse_build_script(
                _sqf_cat(_identity(overlay.path), inner), overlay.app_root, f"{overlay.path}:{inner}"
            )
        env = embedded.shadowed_by(read_sidecar(overlay))
        for warning in env.warnings:
            log.warning("CondaTainer overlay %s: %s", overlay.name, warning)
        return env

    def has_bin(self, overlay: Overlay) -> bool:
        """Looked up in the ``.sqf``'s listing (``unsquashfs -l``, cached); True when it cannot be listed."""
        inner = f"cnt/{overlay.name}/bin"
        listing = _sqf_listing(_identity(overlay.path), inner)
        # When the archive cannot be listed, keep the PATH entry: a missing dir is harmless.
        return listing is None or any(path == "/" + inner or path.startswith(f"/{inner}/") for path in listing)

    def image_owner(self, overlay: Overlay) -> int | None:
        """The owner of an ``.img``'s ``/upper``, read with ``debugfs`` (cached); None for other images."""
        return _upper_owner(_identity(overlay.path)) if overlay.kind == "img" else None

    def device_exists(self, path: str) -> bool:
        """Looked up on the host: the container gets the host's ``/dev``."""
        return os.path.exists(path)


SQF_MAGIC = b"hsqs"  # SquashFS superblock, at offset 0
SIF_MAGIC = b"SIF_MAGIC"  # SIF global header, after the 32-byte launch script
EXT_MAGIC = b"\x53\xef"  # ext2/3/4 superblock magic, at 1024 + 56


def image_problem(path: str, kind: str) -> str | None:
    """Why the file at ``path`` is not a usable ``kind`` image (unreadable, empty, another
    format), or None: read from its first bytes, so a wrong file is refused before a container
    fails on it with Apptainer's "image format not recognized"."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(1024 + 58)
    except OSError as err:
        return f"{path} cannot be read ({err.strerror})"
    found = {
        "sqf": head[:4] == SQF_MAGIC,
        "sif": head[32:41] == SIF_MAGIC,
        "img": head[1024 + 56 : 1024 + 58] == EXT_MAGIC
        or head[:4] == SQF_MAGIC,  # CondaTainer .img may be read-only squashfs
    }
    if found.get(kind, True):
        return None
    expected = {"sqf": "a SquashFS overlay", "sif": "a SIF base image", "img": "an ext3 env overlay"}[kind]
    return f"{path} is not {expected} (it is damaged, or another kind of file with that extension)"


def has_python(overlay: Overlay) -> bool | None:
    """Whether a ``.sqf`` overlay has ``bin/python`` (its listing, cached); None for other images
    or when the archive cannot be listed."""
    if overlay.kind != "sqf":
        return None
    inner = f"cnt/{overlay.name}/bin"
    listing = _sqf_listing(_identity(overlay.path), inner)
    if listing is None:
        return None
    return any(path in (f"/{inner}/python", f"/{inner}/python3") for path in listing)


@functools.lru_cache(maxsize=1024)
def _img_has_python(identity: tuple[str, int, int]) -> bool | None:
    listing = _debugfs(identity[0], "ls /upper/ext3/env/bin")
    return None if listing is None else bool(re.search(rb"\(\d+\)\s+python3?\s", listing + b" "))


def img_has_python(overlay: Overlay) -> bool | None:
    """Whether an ``.img`` env has ``bin/python`` (``debugfs``, cached); None when it cannot tell."""
    return _img_has_python(_identity(overlay.path)) if overlay.kind == "img" else None
