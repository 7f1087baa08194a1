"""Instance state files, in CondaTainer's format plus what we need to find ours again.

CondaTainer keeps ``$XDG_STATE_HOME/condatainer/instance/<name>.json`` with the
instance's name, env, overlays, binds, base image and notes (``exec`` cannot see the
start environment, so it lives here). We add a ``jupyter_condatainer`` section: the
owning server (PID + kernel start time, so a recycled PID is not mistaken for it),
the kernels using the instance, and its stack key. An instance whose owner is gone
is an orphan of a crashed server; one without the section is not ours to touch.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

OWNER_KEY = "jupyter_condatainer"
INSTANCE_PREFIX = "jct-"


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[19])


@dataclass(frozen=True)
class Owner:
    """The server process that owns an instance."""

    pid: int
    start_time: int
    host: str

    @classmethod
    def current(cls) -> Owner:
        """This process, as it signs what it owns (state files, journal records, work files)."""
        pid = os.getpid()
        return cls(pid, process_start_time(pid) or 0, socket.gethostname())

    def is_alive(self) -> bool:
        """Whether what it owns is still in use: same PID and start time (another host's owner: always)."""
        if self.host != socket.gethostname():
            return True  # another node's server: never ours to judge
        return process_start_time(self.pid) == self.start_time


@dataclass
class InstanceRecord:
    """One instance's state file."""

    name: str
    base_image: str
    overlays: list[str]
    bind_paths: list[str]
    env: list[str]
    notes: dict[str, str]
    owner: Owner
    stack_key: str
    kernels: list[str] = field(default_factory=list)
    notebooks: dict[str, str] = field(default_factory=dict)  # kernel id → its notebook (JPY_SESSION_NAME)
    created: float = field(default_factory=time.time)
    slurm_job: str = ""  # the SLURM job holding the instance (kernel_provider.kernel.slurm), if any
    # SingularityCE's OCI mode (kernel_provider.host.oci): no instance, the kernel's own container,
    # found again by its exec process [pid, start time] once the kernel runs.
    oci: bool = False  # no `instance list` shows it
    oci_process: list[int] | None = None
    warm: bool = False  # kept running without kernels, for the next kernel of its stack

    def to_json(self) -> dict:
        """The state file: CondaTainer's fields, ours under ``jupyter_condatainer``."""
        return {
            "name": self.name,
            "env": self.env,
            "overlays": self.overlays,
            "bind_paths": self.bind_paths,
            "base_image": self.base_image,
            "notes": self.notes,
            OWNER_KEY: {
                "owner": asdict(self.owner),
                "stack_key": self.stack_key,
                "kernels": self.kernels,
                "notebooks": self.notebooks,
                "created": self.created,
                **({"slurm_job": self.slurm_job} if self.slurm_job else {}),
                **({"oci": True, "oci_process": self.oci_process} if self.oci else {}),
                **({"warm": True} if self.warm else {}),
            },
        }

    @classmethod
    def from_json(cls, data: dict) -> InstanceRecord | None:
        """Parse a state file; None when it is not one of ours."""
        ours = data.get(OWNER_KEY)
        if not isinstance(ours, dict):
            return None
        return cls(
            name=data["name"],
            base_image=data.get("base_image", ""),
            overlays=list(data.get("overlays", [])),
            bind_paths=list(data.get("bind_paths", [])),
            env=list(data.get("env", [])),
            notes=dict(data.get("notes", {})),
            owner=Owner(**ours["owner"]),
            stack_key=ours.get("stack_key", ""),
            kernels=list(ours.get("kernels", [])),
            notebooks=dict(ours.get("notebooks", {})),
            created=ours.get("created", 0.0),
            slurm_job=str(ours.get("slurm_job", "")),
            oci=bool(ours.get("oci", False)),
            oci_process=ours.get("oci_process"),
            warm=bool(ours.get("warm", False)),
        )


class StateStore:
    """The state directory (per user, like everything CondaTainer keeps)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def path(self, name: str) -> Path:
        """The state file of instance ``name``."""
        return self.directory / f"{name}.json"

    def write(self, record: InstanceRecord) -> None:
        """Atomically replace the state file (readers never see half a file)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{record.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump(record.to_json(), handle, indent=2)
        os.replace(tmp, self.path(record.name))

    def read(self, name: str) -> InstanceRecord | None:
        """An instance's record; None when its file is missing, unreadable or not ours."""
        try:
            return InstanceRecord.from_json(json.loads(self.path(name).read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def remove(self, name: str) -> None:
        """Forget an instance (its file may already be gone)."""
        self.path(name).unlink(missing_ok=True)

    def ours(self) -> list[InstanceRecord]:
        """Every state file written by this product (any server of this user)."""
        if not self.directory.is_dir():
            return []
        records = (self.read(p.stem) for p in sorted(self.directory.glob(f"{INSTANCE_PREFIX}*.json")))
        return [r for r in records if r is not None]
