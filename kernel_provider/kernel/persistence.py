"""Kernels that outlive their server (``persist_kernels``): what is kept, and the adopted process.

A CondaTainer kernel does not die with its server: a local kernel's ``apptainer exec`` runs
in its own session and its instance is a daemon; a SLURM kernel's job and its ``srun``
step keep running. What a next server needs to take such a kernel over under the same id
is written at every launch to ``$XDG_STATE_HOME/condatainer/jupyter-condatainer/kernels/ID.json``
(user-only, like every state file): the kernel's name and working directory, the owning
server, the kernel process (PID and start time, so a recycled PID is never mistaken for
it) and the provisioner's own record (``get_provisioner_info``: connection info,
:class:`~kernel_provider.kernel.provisioner_base.Placement`). A shutdown removes it.

The next server (with ``persist_kernels``) adopts the kernels whose owner is gone and whose
process still runs (:mod:`kernel_provider.server.kernelmanager`); a kernel whose process
died is never adopted, and the usual orphan sweep cleans up after it. Without the option
the records of dead servers are dropped and the sweep stops their instances and jobs, as
before.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.host.runtime import write_private
from kernel_provider.host.state import Owner, process_start_time

POLL_INTERVAL = 0.2


def records_dir(config: CondaTainerConfig) -> Path:
    """Where the kernels' records are (next to our SLURM state files)."""
    return Path(config.state_dir) / "jupyter-condatainer" / "kernels"


@dataclass
class KernelRecord:
    """What a next server needs to adopt one running kernel."""

    kernel_id: str
    kernel_name: str
    cwd: str
    owner: Owner
    pid: int  # the kernel's process as its server started it (apptainer exec, or srun)
    pid_start: int  # its start time in clock ticks (process_start_time)
    provisioner_info: dict[str, Any] = field(default_factory=dict)

    def process_alive(self) -> bool:
        """Does the kernel's process still run (same PID, same start time, not a zombie)?"""
        return process_start_time(self.pid) == self.pid_start and not _zombie(self.pid)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _jsonable(value: Any) -> Any:
    """The provisioner's record as JSON: the connection key is bytes in jupyter_client."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def save(config: CondaTainerConfig, record: KernelRecord) -> None:
    """Write (or replace) a kernel's record, user-only."""
    directory = records_dir(config)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = {**asdict(record), "provisioner_info": _jsonable(record.provisioner_info)}
    write_private(directory / f"{record.kernel_id}.json", json.dumps(data, indent=1))


def remove(config: CondaTainerConfig, kernel_id: str) -> None:
    """Forget a kernel (it was shut down, or it cannot be adopted)."""
    (records_dir(config) / f"{kernel_id}.json").unlink(missing_ok=True)


def load_all(config: CondaTainerConfig) -> list[KernelRecord]:
    """Every readable record; unreadable ones are skipped (and left for a person to look at)."""
    directory = records_dir(config)
    if not directory.is_dir():
        return []
    records = []
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            records.append(KernelRecord(**{**data, "owner": Owner(**data["owner"])}))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return records


def orphans(config: CondaTainerConfig) -> list[KernelRecord]:
    """The records of kernels whose server is gone."""
    return [record for record in load_all(config) if not record.owner.is_alive()]


class AdoptedProcess:
    """A kernel process another (dead) server started, as much of
    ``asyncio.subprocess.Process`` as the provisioners use: ``pid``, ``returncode``,
    ``wait()`` and ``send_signal()``. It is not our child, so its end is seen by polling
    and its exit code is unknown (-1)."""

    def __init__(self, record: KernelRecord):
        self.pid = record.pid
        self._record = record
        self._returncode: int | None = None

    @property
    def returncode(self) -> int | None:
        """None while the process runs, -1 once it is gone."""
        if self._returncode is None and not self._record.process_alive():
            self._returncode = -1
        return self._returncode

    async def wait(self) -> int:
        """Wait until the process is gone."""
        while self.returncode is None:  # noqa: ASYNC110 - not our child: nothing signals its end
            await asyncio.sleep(POLL_INTERVAL)
        return -1

    def send_signal(self, signum: int) -> None:
        """Signal the process (if it still runs)."""
        if self.returncode is None:
            os.kill(self.pid, signum)
