"""e2fsprogs on the host: ``debugfs`` reads an ext3 ``.img`` without mounting it (read-only, no
container); ``e2fsck`` and ``resize2fs`` grow one (:mod:`kernel_provider.envs.disk`)."""

from __future__ import annotations

import os
import shutil

SBIN_DIRS = ("/sbin", "/usr/sbin")  # where debugfs lives; often not on an ordinary user's PATH


def find_debugfs() -> str | None:
    """The ``debugfs`` binary, or None when e2fsprogs is missing."""
    return find_sbin_tool("debugfs")


def find_sbin_tool(name: str) -> str | None:
    """An e2fsprogs binary on PATH or in the sbin directories, or None when missing."""
    found = shutil.which(name)
    if found:
        return found
    return next((path for d in SBIN_DIRS if os.access(path := os.path.join(d, name), os.X_OK)), None)
