"""``jupyter condatainer instances``: list and stop the Apptainer instances of CondaTainer kernels."""

from __future__ import annotations

import asyncio
import json

from traitlets import Bool

from kernel_provider.cli.base import Command, CommandGroup, subcommand_table
from kernel_provider.host.instances import InstanceManager
from kernel_provider.host.process import InstanceError
from kernel_provider.kernel import slurm
from kernel_provider.kernel.notices import format_duration


class ListInstancesApp(Command):
    description = """List this user's jupyter-condatainer instances (state files and running),
and where SLURM's clients are on PATH the jobs of SLURM kernels (job id, node, state, time left).

An instance or job whose server is gone is an ORPHAN: instances stop --orphans stops it."""
    examples = """
jupyter condatainer instances list
jupyter condatainer instances list --json
"""

    json_output = Bool(False, config=True, help="Print JSON.")
    flags = {"json": ({"ListInstancesApp": {"json_output": True}}, "Print JSON.")}

    def main(self) -> None:
        manager = InstanceManager.for_config(self.cnt)
        running = set(asyncio.run(manager.running_names()))
        rows = [
            {
                "name": r.name,
                "running": r.name in running,
                "owner_pid": r.owner.pid,
                "owner_alive": r.owner.is_alive(),
                "kernels": r.kernels,
                "overlays": r.overlays,
            }
            for r in manager.store.ours()
        ]
        jobs = self.slurm_jobs()
        if self.json_output:
            print(json.dumps([*({"kind": "local", **row} for row in rows), *jobs], indent=1))
            return
        for row in rows:
            state = "running" if row["running"] else "stopped"
            owner = "owner alive" if row["owner_alive"] else "ORPHAN"
            print(f"{row['name']:28} {state:8} {owner:12} kernels={len(row['kernels'])}")
        for job in jobs:
            left = format_duration(job["time_left"]) + " left" if job["time_left"] is not None else "no limit"
            owner = f"owner {job['owner_pid']}@{job['owner_host']}" if job["owner_alive"] else "ORPHAN"
            print(
                f"{job['name']:28} job {job['job_id']:8} {job['state']:10} {job['node'] or '-':12} "
                f"{left:16} {owner:24} kernels={len(job['kernels'])}"
            )

    def slurm_jobs(self) -> list[dict]:
        """Our SLURM kernels' jobs (none where SLURM's clients are not on PATH)."""
        if not slurm.available():
            return []
        try:
            return [{"kind": "slurm", **row} for row in asyncio.run(slurm.job_rows(slurm.state_store(self.cnt)))]
        except slurm.SlurmError as err:
            self.fail(str(err))
            return []


class StopInstancesApp(Command):
    description = """Stop instances by name, or every orphan left by a crashed server (--orphans).

Only this user's instances of jupyter-condatainer are stopped (known by their state files),
never one started by hand or by another user. A SLURM kernel's job (jcts-…) is cancelled."""
    examples = """
jupyter condatainer instances stop --orphans
jupyter condatainer instances stop jct-3f2a-1a2b3c4d-9e8f7a    # a name from: instances list
jupyter condatainer instances stop jcts-1a2b3c4d-9e8f          # a SLURM kernel's job
"""

    orphans = Bool(False, config=True, help="Stop instances whose server is gone.")
    flags = {"orphans": ({"StopInstancesApp": {"orphans": True}}, "Stop orphaned instances.")}

    def main(self) -> None:
        manager = InstanceManager.for_config(self.cnt)
        try:
            if self.orphans:
                for name in asyncio.run(manager.sweep_orphans()):
                    print(f"stopped orphan {name}")
                if slurm.available():
                    for name in asyncio.run(slurm.sweep_orphans(slurm.state_store(self.cnt))):
                        print(f"cancelled orphan job {name}")
                return
            if not self.extra_args:
                self.fail("give instance names or --orphans")
            for name in self.extra_args:
                if name.startswith(slurm.JOB_PREFIX):
                    asyncio.run(slurm.stop_by_name(slurm.state_store(self.cnt), name))
                    print(f"cancelled job {name}")
                    continue
                asyncio.run(manager.stop_by_name(name))
                print(f"stopped {name}")
        except InstanceError as err:
            self.fail(str(err))


class InstancesApp(CommandGroup):
    name = "jupyter-condatainer instances"
    description = """Manage the Apptainer instances of CondaTainer kernels.

Each kernel runs in an instance of its stack; the kernels of a writable env share one. A
server stops its instances with its kernels, and at start those a crashed server left."""
    examples = """
jupyter condatainer instances list
jupyter condatainer instances stop --orphans
"""
    subcommands = subcommand_table(list=ListInstancesApp, stop=StopInstancesApp)
