"""The user-only runtime directory: env files, instance info files and ipc sockets."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from jupyter_core.paths import jupyter_runtime_dir


def runtime_dir() -> Path:
    """User-only directory for env files (and ipc sockets); bound into every instance."""
    path = Path(jupyter_runtime_dir()) / "condatainer"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, text: str, mode: int = 0o600) -> Path:
    """Write a user-only file atomically (env files can hold secrets)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
    return path
