"""Facts about images read from disk: the real :class:`~kernel_provider.plan.HostFacts`.

Reading inside a ``.sqf`` takes ``unsquashfs`` (no mount, a few ms); the owner of an
``.img``'s ``upper/`` takes ``debugfs``. Results are cached per file identity
(path, size, mtime), so a kernel restart or a listing does not pay twice.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess

from .envfile import BUILD_SCRIPT_NAME, OverlayEnv, parse_build_script, parse_sidecar
from .overlays import Overlay

_QUIET = {"stdout": subprocess.PIPE, "stderr": subprocess.DEVNULL, "env": {**os.environ, "LC_ALL": "C"}}


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


@functools.lru_cache(maxsize=1024)
def _upper_owner(identity: tuple[str, int, int]) -> int | None:
    debugfs = shutil.which("debugfs") or next(
        (p for p in ("/sbin/debugfs", "/usr/sbin/debugfs") if os.access(p, os.X_OK)), None
    )
    if not debugfs:
        return None
    result = subprocess.run([debugfs, "-R", "stat /upper", identity[0]], check=False, **_QUIET)
    match = re.search(rb"User:\s+(\d+)", result.stdout)
    return int(match.group(1)) if match else None


def read_sidecar(overlay: Overlay) -> OverlayEnv:
    try:
        with open(overlay.sidecar_path, encoding="utf-8", errors="replace") as handle:
            return parse_sidecar(handle.read(), overlay.app_root)
    except FileNotFoundError:
        return OverlayEnv()


class ImageProbe:
    """:class:`~kernel_provider.plan.HostFacts` backed by the real files."""

    def overlay_env(self, overlay: Overlay) -> OverlayEnv:
        embedded = OverlayEnv()
        if overlay.kind == "sqf":
            script = _sqf_cat(_identity(overlay.path), f"cnt/{overlay.name}/{BUILD_SCRIPT_NAME}")
            embedded = parse_build_script(script, overlay.app_root)
        return embedded.shadowed_by(read_sidecar(overlay))

    def has_bin(self, overlay: Overlay) -> bool:
        inner = f"cnt/{overlay.name}/bin"
        listing = _sqf_listing(_identity(overlay.path), inner)
        # When the archive cannot be listed, keep the PATH entry: a missing dir is harmless.
        return listing is None or any(path == "/" + inner or path.startswith(f"/{inner}/") for path in listing)

    def image_owner(self, overlay: Overlay) -> int | None:
        return _upper_owner(_identity(overlay.path)) if overlay.kind == "img" else None

    def device_exists(self, path: str) -> bool:
        return os.path.exists(path)
