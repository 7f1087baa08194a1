"""``debugfs``: read an ext3 ``.img`` on the host without mounting it (read-only, no container)."""

from __future__ import annotations

import os
import shutil

SBIN_DIRS = ("/sbin", "/usr/sbin")  # where debugfs lives; often not on an ordinary user's PATH


def find_debugfs() -> str | None:
    """The ``debugfs`` binary, or None when e2fsprogs is missing."""
    found = shutil.which("debugfs")
    if found:
        return found
    return next((path for d in SBIN_DIRS if os.access(path := os.path.join(d, "debugfs"), os.X_OK)), None)
