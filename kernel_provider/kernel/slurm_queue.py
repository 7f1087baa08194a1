"""A pending SLURM job's place in its partition's queue, and why it waits, in words.

While a SLURM kernel's job waits, its launch progress says "queued as SLURM job 123 on
debug (position 3), waiting for jobs of higher priority": a user can tell a short wait
from a long one without ``squeue``.

The position is the job's place among the jobs that could start before it, in the order
SLURM considers them for scheduling: ``squeue --priority --states=PD --sort=-p,i``, which
``man squeue`` gives for that order (priority first, job id among equals; ``--priority``
lists a job submitted to several partitions once per partition, with that partition's
priority). Jobs that wait for something other than the scheduler (a begin time, a
dependency, a hold, a limit no wait resolves) are not counted: SLURM passes over them.

Pure functions only: :func:`queue_argv` and :func:`parse_queue` build and read the
``squeue``; :mod:`kernel_provider.kernel.slurm` runs it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# Pending reasons that no amount of waiting resolves: a kernel's start fails at once with the reason.
HOPELESS_REASONS = frozenset(
    {
        "PartitionConfig",
        "PartitionTimeLimit",
        "PartitionNodeLimit",
        "BadConstraints",
        "InvalidAccount",
        "InvalidQOS",
        "AccountNotAllowed",
        "QOSNotAllowed",
        "DependencyNeverSatisfied",
    }
)
# Pending jobs with these reasons do not compete for the next start: the scheduler skips them.
NOT_CONTENDING = HOPELESS_REASONS | {"BeginTime", "Dependency", "JobHeldUser", "JobHeldAdmin"}

# SLURM's pending reasons (``squeue %r``) for people; others are shown as SLURM names them.
REASON_WORDS = {
    "Priority": "waiting for jobs of higher priority",
    "Resources": "waiting for resources (CPUs, memory, GPUs) to free up",
    "BeginTime": "waiting for its begin time",
    "Dependency": "waiting for the jobs it depends on",
    "JobHeldUser": "held by its owner (scontrol release releases it)",
    "JobHeldAdmin": "held by an administrator",
    "ReqNodeNotAvail": "the nodes it needs are down, drained or reserved",
    "Reservation": "waiting for its reservation to begin",
    "Licenses": "waiting for licenses",
    "PartitionDown": "its partition is down",
    "PartitionInactive": "its partition is inactive",
    "NodeDown": "a node it needs is down",
    "Cleaning": "a node is still cleaning up after a job",
}


def reason_words(reason: str) -> str:
    """A pending reason in plain words; empty when SLURM gives none (``None``: not yet looked at)."""
    if reason in ("", "None"):
        return ""
    if reason in REASON_WORDS:
        return REASON_WORDS[reason]
    if reason.endswith("Limit"):  # QOSMaxJobsPerUserLimit, AssocGrpCPULimit, …
        return f"held back by a limit of its account or QOS ({reason})"
    return reason


def queue_argv(partitions: str) -> list[str]:
    """``squeue`` listing the pending jobs of the job's partitions (``a,b`` for several) as
    SLURM orders them for scheduling: id, partition, reason, ``|``-separated."""
    return ["squeue", "-h", "--priority", "--states=PD", f"--partition={partitions}", "--sort=-p,i", "-o", "%i|%P|%r"]


@dataclass(frozen=True)
class QueueEntry:
    """One pending job of a partition, as :func:`queue_argv` lists it."""

    job_id: str
    partition: str
    reason: str


def parse_queue(stdout: str) -> list[QueueEntry]:
    """:func:`queue_argv`'s output, in its order."""
    rows = (line.strip().split("|") for line in stdout.splitlines())
    return [QueueEntry(*row) for row in rows if len(row) == 3]


@dataclass(frozen=True)
class QueuePlace:
    """Where a pending job stands: ``position`` 1 starts next in ``partition``."""

    position: int
    partition: str


def queue_place(entries: Iterable[QueueEntry], job_id: str) -> QueuePlace | None:
    """The job's best place among its partitions: 1 + the contending jobs ahead of it in the
    partition where fewest are. None when it is not among the entries (no longer pending)."""
    ahead: dict[str, int] = {}
    best: QueuePlace | None = None
    for entry in entries:
        if entry.job_id == job_id:
            place = QueuePlace(ahead.get(entry.partition, 0) + 1, entry.partition)
            if best is None or place.position < best.position:
                best = place
        elif entry.reason not in NOT_CONTENDING:
            ahead[entry.partition] = ahead.get(entry.partition, 0) + 1
    return best


def pending_message(job_id: str, partitions: str, reason: str, place: QueuePlace | None) -> str:
    """The launch progress of a pending job: "queued as SLURM job 123 on debug (position 3),
    waiting for jobs of higher priority"; the partition of the position when there are several."""
    where = ""
    if place is not None:
        where = f" (position {place.position}" + (f" on {place.partition})" if "," in partitions else ")")
    why = reason_words(reason)
    return f"queued as SLURM job {job_id} on {partitions}{where}" + (f", {why}" if why else "")
