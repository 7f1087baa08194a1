"""A CondaTainer kernel's container output, kept where the REST API can read it without a shell.

- the kernel's own output: the ``apptainer exec`` of the launcher (for a SLURM kernel, the
  ``srun`` step that runs it) writes its stdout and stderr (the launcher's messages, the env's
  ``activate.d`` output, ipykernel's) into ``<runtime dir>/logs/kernel-ID.log``, appended across
  restarts;
- the other logs its provisioner names (:func:`track`): Apptainer's instance log
  (``~/.apptainer/instances/logs/HOST/USER/NAME.{out,err}``, which Apptainer keeps after the
  instance stops; HOST is a SLURM job's node), and a SLURM kernel's job output (the batch
  script's: how its instance started), which goes with the job.

A kernel's log files go at its shutdown, unless its last start failed: then they stay for the
user to read (the ones that would go with the kernel's job are copied next to its output), and
only the newest :data:`KEEP_FAILED` failed kernels' files are kept.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from kernel_provider.host.runtime import runtime_dir

TAIL_BYTES = 64 * 1024  # the end of each log: what a failure needs, not a whole day's output
KEEP_FAILED = 20


@dataclass(frozen=True)
class LogSource:
    """One log of a kernel besides its own output: its name for people and its file."""

    name: str
    path: Path
    transient: bool = False  # removed with the kernel's SLURM job: a failed start keeps a copy


_sources: dict[str, list[LogSource]] = {}  # kernel id → its other logs (this server's kernels)
_live: set[str] = set()  # kernels whose logs are still written: never pruned


def log_dir() -> Path:
    """Where kernels' output files live: in the user-only runtime directory."""
    directory = runtime_dir() / "logs"
    directory.mkdir(mode=0o700, exist_ok=True)
    return directory


def kernel_log_path(kernel_id: str) -> Path:
    """The file a kernel's output goes to."""
    return log_dir() / f"kernel-{kernel_id}.log"


def open_kernel_log(kernel_id: str) -> IO[bytes]:
    """The kernel's output file, opened for the exec (or the fork) to append to (the caller closes its copy)."""
    fd = os.open(kernel_log_path(kernel_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    return os.fdopen(fd, "ab")


def instance_logs(instance: str, host: str = "") -> list[LogSource]:
    """Apptainer's log files of an instance (its stdout and stderr) that runs on ``host`` (default: this one)."""
    config = os.environ.get("APPTAINER_CONFIGDIR") or os.path.join(os.path.expanduser("~"), ".apptainer")
    base = Path(config) / "instances" / "logs" / (host or socket.gethostname()) / getpass.getuser()
    return [
        LogSource("instance stdout (apptainer)", base / f"{instance}.out"),
        LogSource("instance stderr (apptainer)", base / f"{instance}.err"),
    ]


def track(kernel_id: str, sources: Iterable[LogSource]) -> None:
    """The kernel's logs besides its output, from now on (each start says again where it runs)."""
    _sources[kernel_id] = list(sources)
    _live.add(kernel_id)


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
    sources = [LogSource("kernel output", kernel_log_path(kernel_id)), *_sources.get(kernel_id, ())]
    logs = []
    for source in sources:
        text = _tail(source.path)
        if text is not None:
            logs.append({"name": source.name, "path": str(source.path), "text": text})
    return logs


def forget(kernel_id: str, keep: bool) -> None:
    """At a kernel's shutdown: remove its log files, or keep them (a failed start) among the newest few."""
    _live.discard(kernel_id)
    if not keep:
        _sources.pop(kernel_id, None)
        for path in log_dir().glob(f"kernel-{kernel_id}.*"):
            path.unlink(missing_ok=True)
        return
    sources = _sources.get(kernel_id, [])
    _sources[kernel_id] = [_copy(kernel_id, n, s) if s.transient else s for n, s in enumerate(sources)]
    _prune()


def _copy(kernel_id: str, number: int, source: LogSource) -> LogSource:
    """A log that goes with the kernel's job, copied next to the kernel's output (its end: what is read)."""
    text = _tail(source.path)
    if text is None:
        return source
    copy = log_dir() / f"kernel-{kernel_id}.{number}.log"
    copy.write_text(text)
    return LogSource(source.name, copy)


def _prune() -> None:
    """Keep the files of the newest :data:`KEEP_FAILED` kernels that are not running (this server's
    and earlier servers' failed starts)."""
    newest: dict[str, float] = {}
    for path in log_dir().glob("kernel-*.log"):
        kernel_id = path.name.removeprefix("kernel-").split(".")[0]
        if kernel_id not in _live:
            with contextlib.suppress(OSError):
                newest[kernel_id] = max(newest.get(kernel_id, 0.0), path.stat().st_mtime)
    for kernel_id in sorted(newest, key=newest.__getitem__)[:-KEEP_FAILED]:
        forget(kernel_id, keep=False)
