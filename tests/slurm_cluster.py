"""A private single-node SLURM cluster for tests: munged, slurmctld and slurmd on localhost.

Everything the cluster uses lives in one directory: its munge key and socket, its
``slurm.conf`` (clients find it through ``SLURM_CONF``), state, spool, logs and PID
files, and ports picked free at start. So it shares nothing with a real cluster or with
another test run on the same machine, and stopping it touches only its own processes:
first every job of *this* cluster is cancelled (job processes outlive a stopped
slurmd), then the daemons we started are terminated by PID.

One node ``localhost`` with 8 CPU slots (more than the VM's cores, so kernels and their
steps never wait for each other; only CPUs are consumable — with memory too, the first
job would take the node's whole default memory and the next would wait for
``Resources``) in partition ``debug`` (``MaxTime`` 60 minutes: a job asking for more
pends with reason ``PartitionTimeLimit``). See the project's SLURM notes for how each
setting was found.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from conftest import free_port

CPUS = 8
PARTITION = "debug"
PARTITION_MAX_MINUTES = 60
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0

SLURM_CONF = """\
ClusterName=jct-test
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerParameters=batch_sched_delay=0
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
InactiveLimit=10
KillWait=2
MinJobAge=60
SlurmdParameters=config_overrides
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName={partition} Nodes=localhost Default=YES MaxTime={max_minutes} State=UP
"""


class ClusterError(RuntimeError):
    """The cluster did not come up; the message carries the daemons' log tails."""


def _program(name: str) -> str:
    """A daemon or client, also from /usr/sbin (not on every user's PATH)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if not found:
        raise ClusterError(f"{name} is not installed: run scripts/setup-slurm.sh (scripts/setup.sh does)")
    return found


class SlurmCluster:
    """Start with :meth:`start`, point clients at :attr:`env`, stop with :meth:`stop`."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.processes: dict[str, subprocess.Popen] = {}

    @property
    def env(self) -> dict[str, str]:
        """The variables a SLURM client needs to talk to this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def client_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    # --- start -------------------------------------------------------------------------

    def start(self) -> None:
        for sub in ("munge", "state", "spool"):
            (self.root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        # munged insists that everyone may traverse the directories of its socket.
        for directory in (self.root, self.root / "munge"):
            directory.chmod(0o711)
        try:
            self._start_munge()
            self._write_conf()
            self._spawn("slurmctld", [_program("slurmctld"), "-D", "-i", "-f", str(self.conf)])
            self._spawn("slurmd", [_program("slurmd"), "-D", "-N", "localhost", "-f", str(self.conf)])
            self._wait_for(self._node_idle, "slurmd to report the node idle")
        except BaseException:
            self.stop()
            raise

    def _start_munge(self) -> None:
        key = self.root / "munge" / "munge.key"
        if not key.exists():
            subprocess.run([_program("mungekey"), "--create", f"--keyfile={key}"], check=True, capture_output=True)
        munge_dir = self.root / "munge"
        self._spawn(
            "munged",
            [
                _program("munged"),
                "-F",
                f"--key-file={key}",
                f"--socket={self.munge_socket}",
                f"--pid-file={munge_dir / 'munged.pid'}",
                f"--log-file={munge_dir / 'munged.log'}",
                f"--seed-file={munge_dir / 'munged.seed'}",
            ],
        )
        self._wait_for(self._munge_works, "munged to answer")

    def _write_conf(self) -> None:
        self.conf.write_text(
            SLURM_CONF.format(
                ctld_port=free_port(),
                slurmd_port=free_port(),
                user=getpass.getuser(),
                munge_socket=self.munge_socket,
                root=self.root,
                cpus=CPUS,
                partition=PARTITION,
                max_minutes=PARTITION_MAX_MINUTES,
            )
        )

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / f"{name}.out", "ab")
        self.processes[name] = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.client_env(),
            start_new_session=True,
        )
        log.close()

    def _munge_works(self) -> bool:
        result = subprocess.run([_program("munge"), "-S", str(self.munge_socket), "-n"], capture_output=True)
        return result.returncode == 0

    def _node_idle(self) -> bool:
        return self.sinfo_state() == "idle"

    def sinfo_state(self) -> str:
        result = self.run(["sinfo", "-h", "-N", "-n", "localhost", "-o", "%T"], check=False)
        return result.stdout.strip()

    def _wait_for(self, ready, what: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise ClusterError(f"{name} exited ({process.returncode}) while waiting for {what}:\n{self.logs()}")
            if ready():
                return
            time.sleep(0.1)
        raise ClusterError(f"timed out waiting for {what}:\n{self.logs()}")

    def logs(self, lines: int = 15) -> str:
        """The last lines of every daemon log (for error messages)."""
        parts = []
        for path in sorted([*self.root.glob("*.log"), *self.root.glob("*.out"), *self.root.glob("munge/*.log")]):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    # --- clients -----------------------------------------------------------------------

    def run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
        """Run a SLURM client against this cluster."""
        return subprocess.run(argv, capture_output=True, text=True, env=self.client_env(), check=check, timeout=60)

    def jobs(self) -> list[tuple[str, str, str]]:
        """(job id, name, state) of every job this cluster knows that is not finished."""
        result = self.run(["squeue", "-h", "-o", "%i|%j|%T"], check=False)
        return [tuple(line.split("|", 2)) for line in result.stdout.splitlines() if line.strip()]

    def job_ids(self) -> set[str]:
        return {job_id for job_id, _, _ in self.jobs()}

    # --- stop --------------------------------------------------------------------------

    def stop(self) -> None:
        """Cancel this cluster's jobs, wait for them to go, then stop our daemons by PID."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            self._cancel_all_jobs()
        for name in ("slurmd", "slurmctld", "munged"):
            process = self.processes.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _cancel_all_jobs(self) -> None:
        ids = sorted(self.job_ids())
        if not ids:
            return
        # Only this cluster's controller hears this: the ids come from its own queue.
        self.run(["scancel", *ids], check=False)
        deadline = time.monotonic() + STOP_TIMEOUT
        while self.job_ids() and time.monotonic() < deadline:
            time.sleep(0.2)
