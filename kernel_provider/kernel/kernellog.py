"""A CondaTainer kernel's container output, kept where the REST API can read it without a shell.

- the kernel's own output: the ``apptainer exec`` of the launcher writes its stdout and stderr
  (the launcher's messages, the env's ``activate.d`` output, ipykernel's) into
  ``<runtime dir>/logs/kernel-ID.log``, appended across restarts;
- Apptainer's instance log (``~/.apptainer/instances/logs/HOST/USER/NAME.{out,err}``), which
  Apptainer keeps after the instance stops.

A kernel's log file goes at its shutdown, unless its last start failed: then it stays for the
user to read, and only the newest :data:`KEEP_FAILED` such files are kept.
"""

from __future__ import annotations

import getpass
import os
import socket
from pathlib import Path
from typing import IO

from kernel_provider.host.runtime import runtime_dir

TAIL_BYTES = 64 * 1024  # the end of each log: what a failure needs, not a whole day's output
KEEP_FAILED = 20
_instances: dict[str, str] = {}  # kernel id → the instance it ran in (this server's kernels)


def log_dir() -> Path:
    """Where kernels' output files live: in the user-only runtime directory."""
    directory = runtime_dir() / "logs"
    directory.mkdir(mode=0o700, exist_ok=True)
    return directory


def kernel_log_path(kernel_id: str) -> Path:
    """The file a kernel's output goes to."""
    return log_dir() / f"kernel-{kernel_id}.log"


def open_kernel_log(kernel_id: str, instance: str) -> IO[bytes]:
    """The kernel's output file, opened for the exec (or the fork) to append to (the caller closes its copy)."""
    _instances[kernel_id] = instance
    fd = os.open(kernel_log_path(kernel_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    return os.fdopen(fd, "ab")


def instance_log_paths(instance: str) -> list[Path]:
    """Apptainer's log files of an instance (its stdout and stderr)."""
    config = os.environ.get("APPTAINER_CONFIGDIR") or os.path.join(os.path.expanduser("~"), ".apptainer")
    base = Path(config) / "instances" / "logs" / socket.gethostname() / getpass.getuser()
    return [base / f"{instance}.out", base / f"{instance}.err"]


def _tail(path: Path) -> str | None:
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - TAIL_BYTES))
            data = handle.read()
    except OSError:
        return None
    text = data.decode(errors="replace")
    return text if size <= TAIL_BYTES else "[…]\n" + text.split("\n", 1)[-1]


def read_logs(kernel_id: str) -> list[dict]:
    """The kernel's logs that exist: ``[{"name", "path", "text"}]`` (each the last 64 KiB). Blocking."""
    sources = [("kernel output", kernel_log_path(kernel_id))]
    instance = _instances.get(kernel_id)
    if instance:
        out, err = instance_log_paths(instance)
        sources += [("instance stdout (apptainer)", out), ("instance stderr (apptainer)", err)]
    logs = []
    for name, path in sources:
        text = _tail(path)
        if text is not None:
            logs.append({"name": name, "path": str(path), "text": text})
    return logs


def forget(kernel_id: str, keep: bool) -> None:
    """At a kernel's shutdown: remove its output file, or keep it (a failed start) among the newest few."""
    if not keep:
        _instances.pop(kernel_id, None)
        kernel_log_path(kernel_id).unlink(missing_ok=True)
        return
    logs = sorted(log_dir().glob("kernel-*.log"), key=lambda p: p.stat().st_mtime)
    for old in logs[:-KEEP_FAILED]:
        old.unlink(missing_ok=True)
