"""Kernels on SLURM compute nodes: a batch job holds the allocation and the instance.

Why it is built this way:

- **The job owns the instance.** A job step's processes die when the step ends, so the
  Apptainer instance is started by the *batch script*, which then sleeps until the job
  is cancelled (and stops the instance on SIGTERM). The kernel is a job step in that
  allocation (``srun --jobid=J --overlap``, 0.04 s), so a restart is a new step in the
  same job, not a new wait in the queue.
- **tcp on the node's address.** ipc sockets do not cross nodes. The ports must be free
  on the *node*, so the first kernel gets a connection file with ports 0 and ipykernel
  writes the ports it bound back into it; that file, the job's output and status files
  live in the Jupyter runtime directory, which the login and compute nodes must share
  (it is under ``$HOME`` by default).
- **Signals.** SIGINT to ``srun`` is not forwarded (it prints the step's status), so
  kernels are interrupted by message; TERM/KILL go to the kernel's step via
  ``scancel --signal``.
- **Orphans.** A SIGKILLed server leaves its jobs running. Every job is named
  ``jcts-…`` and has a state file (``kernel_provider.host.state``, with the job id and the
  owning server), so the next server start cancels exactly the jobs whose server is
  gone. The prefix differs from local instances' ``jct-`` on purpose: a server's local
  sweep must never stop an instance that a job runs on its host (single-node clusters).

Pure functions build every argv (tested as such); :class:`SlurmAllocation` runs them
with asyncio subprocesses; the provisioner that uses it is
:class:`kernel_provider.kernel.slurm_provisioner.CondaTainerSlurmProvisioner`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import shlex
import shutil
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO

from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.host.instances import Instance
from kernel_provider.host.process import (
    InstanceError,
    apptainer_env,
    apptainer_message,
    run,
)
from kernel_provider.host.python import (
    PROBE_SCRIPT,
    NoPythonError,
    PythonInfo,
    no_python_message,
    parse_probe,
)
from kernel_provider.host.runtime import runtime_dir, write_private
from kernel_provider.host.runtime_detect import flavour_for
from kernel_provider.host.state import InstanceRecord, StateStore
from kernel_provider.kernel.kernellog import LogSource, instance_logs
from kernel_provider.kernel.slurm_queue import HOPELESS_REASONS, QueuePlace, parse_queue, queue_argv, queue_place
from kernel_provider.model import command
from kernel_provider.model.plan import ContainerPlan

JOB_PREFIX = "jcts-"
POLL_INTERVAL = 0.2
QUEUE_POLL = 2.0  # seconds between looks at a pending job's place in its partition's queue
COMMAND_TIMEOUT = 60.0
STEP_TIMEOUT = 120.0
RELEASE_TIMEOUT = 30.0
DEFAULT_LAUNCH_TIMEOUT = 300.0
LAUNCH_TIMEOUT_VARIABLE = "KERNEL_LAUNCH_TIMEOUT"  # the gateway clients' convention
CONNECT_TO_NODE = "node"

ACTIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "SUSPENDED", "COMPLETING", "RESIZING", "REQUEUED"})
# sbatch options we set ourselves; a kernelspec must not change them.
RESERVED_OPTIONS = ("--job-name", "-J", "--output", "-o", "--error", "-e", "--parsable", "--wrap", "--array", "-a")
# Client variables kept from the server's environment; other SLURM_* come from a job
# the server itself may run in, and would leak into our sbatch/srun as options.
KEPT_SLURM_VARIABLES = ("SLURM_CONF", "SLURM_CLUSTERS")
# What a step forwards into the container (``--cleanenv`` drops the rest): the job's
# SLURM_* and the GPUs SLURM gave it.
FORWARD_PATTERN = "SLURM_[A-Za-z0-9_]+|CUDA_VISIBLE_DEVICES|ROCR_VISIBLE_DEVICES|HIP_VISIBLE_DEVICES|GPU_DEVICE_ORDINAL"


def forward_script(container_env_prefix: str = "APPTAINERENV_") -> str:
    """sh that exports the step's :data:`FORWARD_PATTERN` variables under the runtime's prefix
    (``APPTAINERENV_``, SingularityCE's ``SINGULARITYENV_``), then execs its arguments."""
    return (
        f"for name in $(env | grep -oE '^({FORWARD_PATTERN})=' | tr -d =); do "
        f'export "{container_env_prefix}$name=$(printenv "$name")"; done; exec "$@"'
    )


NO_PROXY = "localhost,127.0.0.1"

log = logging.getLogger(__name__)


class SlurmError(InstanceError):
    """A kernel's job could not be submitted, did not start, or its step failed."""


class StartCancelledError(SlurmError):
    """The kernel was shut down while its job waited in the queue."""


# --- pure argv builders -------------------------------------------------------------


def check_sbatch_args(args: Sequence[str]) -> list[str]:
    """The kernelspec's sbatch options, refusing the ones that identify our job."""
    for arg in args:
        option = arg.split("=", 1)[0]
        if not arg.startswith("-"):
            raise SlurmError(f"slurm_args must be sbatch options like '--partition=debug', not {arg!r}")
        if option in RESERVED_OPTIONS:
            raise SlurmError(
                f"slurm_args may not set {option}: jupyter-condatainer names the job and its output itself"
            )
    return list(args)


def sbatch_argv(name: str, script: str, output: str, slurm_args: Sequence[str]) -> list[str]:
    """Submit the holding job. One node and one task unless the kernelspec says otherwise."""
    return [
        "sbatch",
        "--parsable",
        f"--job-name={name}",
        f"--output={output}",
        "--nodes=1",
        "--ntasks=1",
        *check_sbatch_args(slurm_args),
        script,
    ]


def job_state_argv(job_id: str) -> list[str]:
    """One job's state, partition, pending reason, node, (expected) start and end, ``|``-separated.

    ``-t all`` keeps an ended job in the answer for ``MinJobAge`` (300 s by default), so its
    end can be told apart: TIMEOUT is its time limit. ``%S`` of a pending job is the start
    SLURM expects, what ``squeue --start`` shows; ``%e`` of a running one its time limit.
    """
    return ["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T|%P|%r|%N|%S|%e"]


def my_jobs_argv() -> list[str]:
    """All of this user's jobs (the orphan sweep and ``instances list`` keep ours by name prefix)."""
    return ["squeue", "--me", "-h", "-o", "%i|%j|%T|%N|%e"]


def steps_argv(job_id: str) -> list[str]:
    """``squeue`` listing a job's steps (to tell whether the kernel step still runs)."""
    return ["squeue", "-h", "-s", "-j", job_id, "-o", "%i|%j"]


def node_address_argv(node: str) -> list[str]:
    """The address SLURM itself reaches the node at (``NodeAddr``)."""
    return ["sinfo", "-h", "-N", "-n", node, "-o", "%o"]


def step_argv(
    job_id: str,
    node: str,
    step_name: str,
    argv: Sequence[str],
    container_env_prefix: str = "APPTAINERENV_",
    pty: bool = False,
) -> list[str]:
    """Run ``argv`` as a step of the job on its instance's node, with SLURM's variables
    forwarded into the container (see :func:`forward_script`); ``pty``: on a terminal of its
    own there (``srun --pty``), for an interactive shell."""
    return [
        "srun",
        f"--jobid={job_id}",
        "--overlap",
        *(["--pty"] if pty else []),
        "--nodes=1",
        "--ntasks=1",
        f"--nodelist={node}",
        f"--job-name={step_name}",
        "/bin/sh",
        "-c",
        forward_script(container_env_prefix),
        "jct-step",
        *argv,
    ]


def scancel_argv(target: str, signal_name: str = "", batch: bool = False) -> list[str]:
    """Cancel a job or step, or only signal it (``batch``: just the batch script)."""
    return ["scancel", *(["--batch"] if batch else []), *([f"--signal={signal_name}"] if signal_name else []), target]


def proxy_finder_script() -> str:
    """Bash that prints ``host:port`` of CondaTainer's proxy when one answers.

    As CondaTainer's ``internal/proxy``: the per-job PID file in its tmp dir first, then
    the shared one in its data dir (JSON ``{"host", "via", "port", "pid"}``), used only
    when a TCP connect to it succeeds within a second.
    """
    return r"""find_proxy() {
    local file host port
    for file in "${CNT_TMPDIR:-${SLURM_TMPDIR:-${TMPDIR:-/tmp}}}/cnt-${USER:-condatainer}/proxy.pid" \
                "${XDG_DATA_HOME:-$HOME/.local/share}/condatainer/proxy.pid"; do
        [ -r "$file" ] || continue
        host=$(sed -n 's/.*"host"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' "$file")
        port=$(sed -n 's/.*"port"[[:space:]]*:[[:space:]]*\([0-9][0-9]*\).*/\1/p' "$file")
        [ -n "$host" ] && [ -n "$port" ] || continue
        if timeout 1 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$host" "$port" 2>/dev/null; then
            echo "$host:$port"
            return
        fi
    done
}"""


def job_script(start_argv: Sequence[str], stop_argv: Sequence[str], status_file: str) -> str:
    """The batch script: start the instance, report, hold the allocation until cancelled.

    The status file (``key=value`` lines, replaced atomically) tells the server that the
    instance is up and which proxy the node sees. A SIGTERM (``scancel``) stops the
    instance before the job ends: with ``proctrack/linuxproc`` its daemonised processes
    would otherwise outlive the job (and so would the ``sleep`` that holds the job).
    """
    return f"""#!/bin/bash
# jupyter-condatainer: holds a kernel's allocation and its Apptainer instance.
status={shlex.quote(status_file)}
report() {{ printf '%s\\n' "$@" >"$status.tmp" && mv -f "$status.tmp" "$status"; }}
stop_instance() {{ kill "$holder" 2>/dev/null; {shlex.join(stop_argv)} >/dev/null 2>&1; exit 0; }}
trap stop_instance TERM INT HUP
{proxy_finder_script()}
if ! {shlex.join(start_argv)}; then
    report state=failed
    exit 1
fi
report state=ready "host=$(hostname)" "proxy=$(find_proxy)" "addr=$(hostname -I 2>/dev/null | cut -d' ' -f1)"
while :; do sleep 3600 & holder=$!; wait "$holder"; done
"""


def parse_status(text: str) -> dict[str, str]:
    """The batch script's status file as a dict."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def proxy_env(address: str) -> list[tuple[str, str]]:
    """CondaTainer's ``ProxyEnvList``: one port speaks HTTP CONNECT and SOCKS5."""
    if not address:
        return []
    http, socks = f"http://{address}", f"socks5://{address}"
    return [
        ("http_proxy", http),
        ("https_proxy", http),
        ("HTTP_PROXY", http),
        ("HTTPS_PROXY", http),
        ("all_proxy", socks),
        ("ALL_PROXY", socks),
        ("no_proxy", NO_PROXY),
        ("NO_PROXY", NO_PROXY),
    ]


def slurm_env(environ: Mapping[str, str]) -> dict[str, str]:
    """Environment for sbatch/srun/squeue/scancel (and so for the job): the server's,
    without the SLURM_* of a job the server may itself run in."""
    return {key: value for key, value in environ.items() if not key.startswith("SLURM_") or key in KEPT_SLURM_VARIABLES}


def without_outer_job(argv: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    """``argv`` under ``env -u`` for each variable :func:`slurm_env` drops: for a SLURM client
    started by something that passes it the server's whole environment (a terminal)."""
    dropped = sorted(set(environ) - set(slurm_env(environ)))
    return ["env", *[arg for key in dropped for arg in ("-u", key)], *argv] if dropped else list(argv)


def parse_slurm_time(text: str) -> float | None:
    """A time squeue prints (``2026-12-02T17:40:00``, the cluster's local time) as epoch
    seconds; None for ``N/A``, ``Unknown`` or no limit."""
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class JobState:
    """A job as ``squeue`` reports it: state, partition, the reason it waits, its node, and
    its (expected) start and end as squeue prints them."""

    state: str
    partition: str
    reason: str
    node: str
    start: str = ""
    end: str = ""

    @property
    def start_time(self) -> float | None:
        """When it started, or for a pending job when SLURM expects it to (epoch seconds)."""
        return parse_slurm_time(self.start)

    @property
    def end_time(self) -> float | None:
        """When its time limit ends it (epoch seconds); None without a limit."""
        return parse_slurm_time(self.end)


def parse_job_state(stdout: str) -> JobState | None:
    """``squeue -o %T|%P|%r|%N|%S|%e`` output; None when the job is not in the queue."""
    for line in stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 6:
            return JobState(*parts)
    return None


@dataclass(frozen=True)
class QueuedJob:
    """One of this user's jobs in ``squeue``: id and name (ours start with the job prefix),
    state, node and when its time limit ends it."""

    job_id: str
    name: str
    state: str
    node: str = ""
    end: str = ""


def parse_jobs(stdout: str) -> list[QueuedJob]:
    """``squeue -o %i|%j|%T|%N|%e`` lines as jobs."""
    jobs = []
    for line in stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 5:
            jobs.append(QueuedJob(*parts))
    return jobs


def orphan_jobs(jobs: Iterable[QueuedJob], records: Mapping[str, InstanceRecord]) -> list[QueuedJob]:
    """Our jobs (by name prefix) whose owning server is gone, or that have no state file.

    A job's state file is written before it is submitted, so a job of ours without one
    was left by an interrupted start or stop. Other names are never ours to cancel.
    """
    orphans = []
    for job in jobs:
        if not job.name.startswith(JOB_PREFIX):
            continue
        record = records.get(job.name)
        if record is None or not record.owner.is_alive():
            orphans.append(job)
    return orphans


# --- running SLURM commands ------------------------------------------------------------


def available() -> bool:
    """Are SLURM's clients on PATH (a login node of a cluster)?"""
    return all(shutil.which(name) for name in ("sbatch", "srun", "squeue", "scancel"))


async def run_slurm(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT):
    """Run a SLURM client; a missing one is a :class:`SlurmError` that says so."""
    if not shutil.which(argv[0]):
        raise SlurmError(f"{argv[0]} not found: SLURM kernels need SLURM's client commands on PATH")
    return await run(argv, timeout, env=slurm_env(apptainer_env()))


def state_store(config: CondaTainerConfig) -> StateStore:
    """SLURM kernels' state files: apart from CondaTainer's own ``instance/`` directory,
    whose files describe instances on *this* host."""
    return StateStore(Path(config.state_dir) / "jupyter-condatainer" / "slurm")


def read_records(store: StateStore) -> dict[str, InstanceRecord]:
    """The state files of our SLURM kernels' jobs, by name."""
    if not store.directory.is_dir():
        return {}
    records = (store.read(path.stem) for path in sorted(store.directory.glob(f"{JOB_PREFIX}*.json")))
    return {record.name: record for record in records if record is not None}


_swept: set[str] = set()


async def sweep_orphans_once(store: StateStore, logger: logging.Logger = log) -> None:
    """The first SLURM kernel of a process cleans up after a crashed server."""
    key = str(store.directory)
    if key not in _swept:
        _swept.add(key)
        await sweep_orphans(store, logger)


async def sweep_orphans(store: StateStore, logger: logging.Logger = log) -> list[str]:
    """Cancel our jobs whose server is gone; forget state files of jobs that ended.

    Returns the names of the cancelled jobs. Jobs of other names, and ours whose server
    is alive (on this host or another), are left alone. Without any state file there is
    nothing of ours to find (each is written before its job is submitted), so SLURM is
    not even asked: a server start on a machine without SLURM kernels stays quiet.
    """
    records = read_records(store)
    if not records:
        return []
    jobs = await my_jobs()
    orphans = orphan_jobs(jobs, records)
    await asyncio.gather(*(_cancel_orphan(job, store, logger) for job in orphans))
    queued = {job.name for job in jobs}
    for name, record in records.items():
        if name not in queued and not record.owner.is_alive():
            _forget(store, name)
    return [job.name for job in orphans]


async def my_jobs() -> list[QueuedJob]:
    """This user's jobs in the queue (anyone's names)."""
    result = await run_slurm(my_jobs_argv())
    if result.returncode != 0:
        raise SlurmError(f"squeue failed: {result.stderr.strip()}")
    return parse_jobs(result.stdout)


async def job_rows(store: StateStore) -> list[dict]:
    """Our SLURM kernels' jobs for ``instances list``: each state file with its job as squeue
    sees it (state, node, time left), and ours in the queue without a state file."""
    records = read_records(store)
    queued = {job.name: job for job in await my_jobs() if job.name.startswith(JOB_PREFIX)}
    rows = []
    for name in sorted({*records, *queued}):
        record, job = records.get(name), queued.get(name)
        end = parse_slurm_time(job.end) if job else None
        rows.append(
            {
                "name": name,
                "job_id": job.job_id if job else (record.slurm_job if record else ""),
                "state": job.state if job else "gone",
                "node": job.node if job else "",
                "time_left": max(0.0, end - time.time()) if end else None,
                "owner_pid": record.owner.pid if record else None,
                "owner_host": record.owner.host if record else "",
                "owner_alive": record.owner.is_alive() if record else False,
                "kernels": record.kernels if record else [],
            }
        )
    return rows


async def stop_by_name(store: StateStore, name: str) -> None:
    """Cancel one of our kernels' jobs by its name (``instances stop``); refuse other names."""
    record = store.read(name) if name.startswith(JOB_PREFIX) else None
    job = next((j for j in await my_jobs() if j.name == name), None) if name.startswith(JOB_PREFIX) else None
    if record is None and job is None:
        raise SlurmError(f"{name} is not a jupyter-condatainer SLURM job of this user")
    if job is not None:
        await stop_job(job.job_id, graceful=job.state == "RUNNING")
    _forget(store, name)


async def _cancel_orphan(job: QueuedJob, store: StateStore, logger: logging.Logger) -> None:
    logger.info("CondaTainer: cancelling job %s (%s) left by a server that is gone", job.job_id, job.name)
    await stop_job(job.job_id, graceful=job.state == "RUNNING")
    _forget(store, job.name)


async def job_state(job_id: str) -> JobState | None:
    """The job's state, or None once it has left the queue."""
    result = await run_slurm(job_state_argv(job_id))
    if result.returncode != 0 and "Invalid job id" not in result.stderr:
        raise SlurmError(f"squeue failed for job {job_id}: {result.stderr.strip()}")
    return parse_job_state(result.stdout)


async def place_in_queue(job_id: str, partitions: str) -> QueuePlace | None:
    """A pending job's place in its partitions' queue (:mod:`~kernel_provider.kernel.slurm_queue`);
    None when squeue does not list it (it left the queue, or squeue failed: the position is a hint)."""
    result = await run_slurm(queue_argv(partitions))
    return queue_place(parse_queue(result.stdout), job_id) if result.returncode == 0 else None


async def stop_job(job_id: str, graceful: bool) -> None:
    """End a job and wait until it has left the queue.

    ``graceful``: SIGTERM to the batch script first, which stops the instance and exits;
    ``scancel`` after that (or at once for a job that never ran) makes sure it is gone.
    """
    if graceful:
        await run_slurm(scancel_argv(job_id, "TERM", batch=True))
        if await _wait_gone(job_id, RELEASE_TIMEOUT):
            return
    await run_slurm(scancel_argv(job_id))
    await _wait_gone(job_id, RELEASE_TIMEOUT)


async def _wait_gone(job_id: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = await job_state(job_id)
        if state is None or state.state not in ACTIVE_STATES:
            return True
        await asyncio.sleep(POLL_INTERVAL)
    return False


def _forget(store: StateStore, name: str) -> None:
    """Remove a job's state file and the files it kept in the runtime directory."""
    store.remove(name)
    for suffix in (".env", ".sbatch", ".status", ".status.tmp", ".out", ".json"):
        (runtime_dir() / f"{name}{suffix}").unlink(missing_ok=True)


# --- one kernel's allocation ---------------------------------------------------------------


class SlurmAllocation:
    """A kernel's batch job: its instance on the node, steps in it, and its end.

    Use :meth:`submit`, then :meth:`wait_ready`; :meth:`release` ends it (also after
    a failed start). The state file is written before ``sbatch``, so a server killed at
    any point leaves a job the next server can attribute.
    """

    @classmethod
    def for_kernel(
        cls, plan: ContainerPlan, kernel_id: str, store: StateStore, apptainer: str, logger: logging.Logger = log
    ) -> SlurmAllocation:
        """A new allocation for a kernel, with its instance named ``jcts-<kernel id>-…``
        (:meth:`Instance.prepare`); nothing is submitted yet."""
        name = f"{JOB_PREFIX}{kernel_id[:8]}-{secrets.token_hex(2)}"
        return cls(Instance.prepare(name, plan, shared=False, kernels=[kernel_id]), store, apptainer, logger)

    def __init__(self, instance: Instance, store: StateStore, apptainer: str, logger: logging.Logger = log):
        self.instance = instance
        self.store = store
        self.apptainer = apptainer
        self.log = logger
        self.job_id = ""
        self.node = ""  # SLURM's node name (for srun --nodelist)
        self.proxy = ""  # host:port of CondaTainer's proxy as seen from the node
        self.node_host = ""  # the node's hostname, and its first address, as the node reports them
        self.node_ip = ""
        self.python: PythonInfo | None = None

    @property
    def name(self) -> str:
        """The job's name, which is also the instance's on the node."""
        return self.instance.name

    def _path(self, suffix: str) -> Path:
        return runtime_dir() / f"{self.name}{suffix}"

    def save(self) -> None:
        """Write the job's state file (what a later sweep needs to cancel it)."""
        self.store.write(self.instance.record(slurm_job=self.job_id))

    async def submit(self, slurm_args: Sequence[str]) -> str:
        """``sbatch`` the holding job; SLURM's refusal becomes the error message."""
        plan, name = self.instance.plan, self.name
        start = command.instance_start_argv(self.apptainer, plan, name, str(self.instance.env_file))
        script = job_script(start, command.instance_stop_argv(self.apptainer, name), str(self._path(".status")))
        script_path = write_private(self._path(".sbatch"), script)
        self.save()
        result = await run_slurm(sbatch_argv(name, str(script_path), str(self._path(".out")), slurm_args))
        if result.returncode != 0:
            raise SlurmError(f"SLURM did not accept the kernel's job: {_slurm_message(result.stderr)}")
        self.job_id = result.stdout.strip().split(";")[0]
        self.save()
        return self.job_id

    async def wait_ready(
        self,
        timeout: float,
        on_queued: Callable[[JobState], None] | None = None,
        cancelled: asyncio.Event | None = None,
        on_change: Callable[[JobState, QueuePlace | None], None] | None = None,
    ) -> JobState:
        """Wait until the job runs and its instance is up; fail with SLURM's reason.

        While the job waits, logs "queued as job N on partition P (reason), expected to start
        at T" and calls ``on_queued`` whenever the reason or the expected start changes;
        ``on_change`` (the kernel's launch progress) whenever anything SLURM says of it, or its
        place in the queue, changes. The place is looked up every :data:`QUEUE_POLL` seconds while
        the job is pending (a busy partition's queue is long; a person reads it every few seconds). A
        pending reason in :data:`HOPELESS_REASONS` fails at once; anything else fails after
        ``timeout``; ``cancelled`` set (the kernel is shut down while it waits) fails within
        one poll, and the caller's clean-up cancels the job. Returns the running job's state.
        """
        deadline = time.monotonic() + timeout
        announced: tuple[str, str, str] | None = None
        seen: tuple[JobState, QueuePlace | None] | None = None
        place: QueuePlace | None = None
        next_place = time.monotonic()
        while True:
            if cancelled is not None and cancelled.is_set():
                raise StartCancelledError(f"the start was cancelled while job {self.job_id} waited; it is cancelled")
            job = await job_state(self.job_id)
            if job is not None and job.state != "PENDING":
                place = None
            elif job is not None and on_change is not None and time.monotonic() >= next_place:
                next_place = time.monotonic() + QUEUE_POLL
                place = await place_in_queue(self.job_id, job.partition)
            if on_change is not None and job is not None and (job, place) != seen:
                seen = (job, place)
                on_change(job, place)
            status = self._read_status()
            if status.get("state") == "failed":
                raise SlurmError(f"job {self.job_id} could not start the container:\n{self._output_tail()}")
            if job is None or job.state not in ACTIVE_STATES:
                ended = job.state if job else "left the queue"
                raise SlurmError(
                    f"job {self.job_id} ended ({ended}) before its container was up:\n{self._output_tail()}"
                )
            if job.state == "RUNNING" and status.get("state") == "ready":
                self.node, self.proxy = job.node, status.get("proxy", "")
                self.node_host, self.node_ip = status.get("host", ""), status.get("addr", "")
                return job
            if job.state == "PENDING":
                if job.reason in HOPELESS_REASONS:
                    raise SlurmError(f"job {self.job_id} cannot start on partition {job.partition}: {job.reason}")
                if announced != (job.partition, job.reason, job.start):
                    announced = (job.partition, job.reason, job.start)
                    self.log.info("CondaTainer kernel: %s", queued_message(self.job_id, job))
                    if on_queued is not None:
                        on_queued(job)
            if time.monotonic() > deadline:
                reason = f": {job.reason}" if _meaningful(job.reason) else ""
                waited = f"still {job.state}{reason}"
                raise SlurmError(f"job {self.job_id} did not start within {timeout:g} s ({waited}); it was cancelled")
            await asyncio.sleep(POLL_INTERVAL)

    @classmethod
    async def resume(
        cls, record: InstanceRecord, plan: ContainerPlan, kernel_id: str, store: StateStore, apptainer: str, logger
    ) -> tuple[SlurmAllocation, JobState] | None:
        """The running job of a server that is gone, taken over for its kernel (``persist_kernels``):
        node and proxy from its status file, the state file signed by this server. None when the
        job no longer runs."""
        allocation = cls(
            Instance.prepare(record.name, plan, shared=False, kernels=[kernel_id]), store, apptainer, logger
        )
        allocation.job_id = record.slurm_job
        state = await allocation.state() if record.slurm_job else None
        status = allocation._read_status()
        if state is None or state.state != "RUNNING" or status.get("state") != "ready":
            allocation.instance.locks.release()
            return None
        allocation.node, allocation.proxy = state.node, status.get("proxy", "")
        allocation.node_host, allocation.node_ip = status.get("host", ""), status.get("addr", "")
        allocation.save()
        return allocation, state

    def _read_status(self) -> dict[str, str]:
        try:
            return parse_status(self._path(".status").read_text())
        except OSError:
            return {}

    def _output_tail(self) -> str:
        try:
            return apptainer_message(self._path(".out").read_text(errors="replace"))
        except OSError:
            return "(no job output)"

    async def node_address(self) -> str:
        """Where this host reaches the node: SLURM's ``NodeAddr`` (the node name unless the site
        set one), resolved here, on the login node. A name that resolves to a loopback address
        here (``/etc/hosts`` on some images maps every hostname to 127.0.1.1) while the node is
        another host would be unreachable: then the node's own first address (``hostname -I``
        in the job) is used."""
        result = await run_slurm(node_address_argv(self.node))
        address = result.stdout.strip().splitlines()[0] if result.stdout.strip() else self.node
        infos = await asyncio.to_thread(socket.getaddrinfo, address, None, socket.AF_INET, socket.SOCK_STREAM)
        return choose_node_address(infos[0][4][0], self.node_host, self.node_ip, socket.gethostname())

    async def state(self) -> JobState | None:
        """The job as squeue sees it now (ended jobs for a while too); None once it is gone."""
        return await job_state(self.job_id) if self.job_id else None

    def step(self, argv: Sequence[str], step_name: str = "", pty: bool = False) -> list[str]:
        """``srun`` argv that runs ``argv`` as a step of this job on its node (``pty``: on a terminal)."""
        prefix = flavour_for(argv[0]).container_env_prefix if argv else "APPTAINERENV_"
        return step_argv(self.job_id, self.node, step_name or f"{self.name}-step", argv, prefix, pty)

    async def probe_python(self) -> PythonInfo:
        """Which ``python`` the stack's PATH gives on the node, and whether it has ipykernel."""
        if self.python is None:
            inner = command.instance_exec_argv(
                self.apptainer, self.name, str(self.instance.env_file), ["python", "-c", PROBE_SCRIPT]
            )
            result = await run_slurm(self.step(inner), STEP_TIMEOUT)
            if result.returncode != 0:
                if "not found" in result.stderr:
                    raise NoPythonError(no_python_message(", ".join(o.name for o in self.instance.plan.overlays)))
                raise SlurmError(f"probing python in job {self.job_id} failed:\n{apptainer_message(result.stderr)}")
            self.python = parse_probe(result.stdout)
        return self.python

    async def start_step(
        self, argv: Sequence[str], step_name: str, output: IO[bytes] | None = None
    ) -> asyncio.subprocess.Process:
        """Start a long-running step (the kernel); ``srun`` relays its stdout and stderr into
        ``output`` (the kernel's log), else where the server's go."""
        full = self.step(argv, step_name)
        return await asyncio.create_subprocess_exec(
            *full,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=asyncio.subprocess.STDOUT if output else None,
            env=slurm_env(apptainer_env()),
            start_new_session=True,
        )

    def log_sources(self) -> list[LogSource]:
        """The job's output (the batch script's: its instance's start, in the runtime directory, gone
        with the job) and, once the job runs, its instance's Apptainer log on the node."""
        job = LogSource(f"SLURM job {self.job_id} output", self._path(".out"), transient=True)
        return [job, *(instance_logs(self.name, self.node_host) if self.node_host else [])]

    async def signal_step(self, step_name: str, signal_name: str) -> bool:
        """Signal the running step of that name; False when there is none."""
        result = await run_slurm(steps_argv(self.job_id))
        ids = [line.split("|")[0] for line in result.stdout.splitlines() if line.strip().endswith(f"|{step_name}")]
        if not ids:
            return False
        await run_slurm(scancel_argv(ids[-1], signal_name))
        return True

    async def release(self) -> None:
        """Stop the instance and end the job; forget its files and state. Idempotent."""
        try:
            if self.job_id:
                await stop_job(self.job_id, graceful=bool(self._read_status()))
        finally:
            self.instance.locks.release()
            _forget(self.store, self.name)


def choose_node_address(resolved: str, node_host: str, node_ip: str, this_host: str) -> str:
    """The address to reach a kernel's node at: ``resolved`` (its NodeAddr as this host resolves
    it), unless that is a loopback address of *this* host while the node is another one; then
    the node's own address, if it reported one."""
    if ipaddress.ip_address(resolved).is_loopback and node_host and node_host != this_host and node_ip:
        return node_ip
    return resolved


def queued_message(job_id: str, job: JobState) -> str:
    """ "queued as job N on partition P (reason), expected to start at HH:MM:SS"."""
    why = f" ({job.reason})" if _meaningful(job.reason) else ""
    start = job.start_time
    when = f", expected to start at {time.strftime('%H:%M:%S', time.localtime(start))}" if start else ""
    return f"queued as job {job_id} on partition {job.partition}{why}{when}"


def _meaningful(reason: str) -> bool:
    """squeue prints ``None`` for a job that waits for nothing in particular."""
    return reason not in ("", "None")


def _slurm_message(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return "\n".join(lines[-4:]) or "(no output)"
