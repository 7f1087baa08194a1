"""``jupyter condatainer instances``: list and stop the Apptainer instances of CondaTainer kernels."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from traitlets import Bool

from kernel_provider.cli.base import Command, CommandGroup, subcommand_table
from kernel_provider.host import oci
from kernel_provider.host.holders import kernels_in_words
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

    usage = "instances list [--json]"

    def main(self) -> None:
        manager = InstanceManager.for_config(self.cnt)
        running = set(asyncio.run(manager.running_names()))
        records = manager.store.ours()
        rows = [
            {
                "name": r.name,
                "running": r.name in running or oci.is_alive(r.oci_process),  # OCI: no instance to list
                "owner_pid": r.owner.pid,
                "owner_alive": r.owner.is_alive(),
                "kernels": r.kernels,
                "notebooks": r.notebooks,
                "base_image": r.base_image,
                "warm": r.warm,
                "overlays": r.overlays,
            }
            for r in records
        ]
        jobs = self.slurm_jobs()
        if self.json_output:
            print(json.dumps([*({"kind": "local", **row} for row in rows), *jobs], indent=1))
            return
        if not rows and not jobs:
            print("none: no jupyter-condatainer instance or SLURM job of this user is running")
            return
        if rows:
            table = [("INSTANCE", "STATE", "SERVER", "STACK", "KERNELS")]
            for record, row in zip(records, rows):
                state = "stopped"
                if row["running"]:
                    state = "warm (idle, kept for the next kernel)" if row["warm"] else "running"
                owner = f"pid {record.owner.pid}" if row["owner_alive"] else "ORPHAN"
                table.append((record.name, state, owner, stack_of(record), kernels_in_words(record)))
            print_table(table)
        if jobs:
            table = [("SLURM JOB", "INSTANCE", "STATE", "NODE", "TIME LEFT", "SERVER", "KERNELS")]
            for job in jobs:
                left = format_duration(job["time_left"]) if job["time_left"] is not None else "no limit"
                owner = f"pid {job['owner_pid']}@{job['owner_host']}" if job["owner_alive"] else "ORPHAN"
                kernels = f"{len(job['kernels'])} kernel(s)"
                table.append((job["job_id"], job["name"], job["state"], job["node"] or "-", left, owner, kernels))
            if rows:
                print()
            print_table(table)

    def slurm_jobs(self) -> list[dict]:
        """Our SLURM kernels' jobs (none where SLURM's clients are not on PATH)."""
        if not slurm.available():
            return []
        store = slurm.state_store(self.cnt)
        try:
            return [{"kind": "slurm", **row} for row in asyncio.run(slurm.job_rows(store))]
        except slurm.SlurmError as err:
            if not slurm.read_records(store):
                return []  # no SLURM kernel of ours, and a SLURM client that is not set up here
            print(
                f"warning: SLURM jobs not listed, SLURM did not answer; check it with squeue.\n{err}", file=sys.stderr
            )
            return []


def print_table(table: list[tuple[str, ...]]) -> None:
    """Columns padded to their widest cell; the last one free, since it is long (kernels, notebooks)."""
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]) - 1)]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[-1])


def stack_of(record) -> str:
    """An instance's stack in words: the base image, then each overlay's file name (and ``rw``)."""
    images = [os.path.basename(record.base_image)]
    for arg in record.overlays:
        path, _, mode = arg.rpartition(":")
        images.append(os.path.basename(path or arg) + (" (rw)" if mode == "rw" else ""))
    return " + ".join(images)


class StopInstancesApp(Command):
    description = """Stop instances by name, every orphan left by a crashed server (--orphans), or the
warm ones: idle instances a server keeps for the next kernel of their stack (--warm).

Only this user's instances of jupyter-condatainer are stopped (known by their state files),
never one started by hand or by another user. A SLURM kernel's job (jcts-…) is cancelled."""
    examples = """
jupyter condatainer instances stop --orphans
jupyter condatainer instances stop --warm      # e.g. before condatainer rm of an image they hold
jupyter condatainer instances stop jct-3f2a-1a2b3c4d-9e8f7a    # a name from: instances list
jupyter condatainer instances stop jcts-1a2b3c4d-9e8f          # a SLURM kernel's job
"""

    orphans = Bool(False, config=True, help="Stop instances whose server is gone.")
    warm = Bool(False, config=True, help="Stop the idle instances servers keep warm (no kernel in them).")
    flags = {
        "orphans": ({"StopInstancesApp": {"orphans": True}}, "Stop orphaned instances."),
        "warm": ({"StopInstancesApp": {"warm": True}}, "Stop warm (idle) instances."),
    }

    arguments = (0, None)
    usage = "instances stop NAME [NAME …] | --orphans | --warm"

    def main(self) -> None:
        manager = InstanceManager.for_config(self.cnt)
        try:
            if self.orphans:
                for name in asyncio.run(manager.sweep_orphans()):
                    print(f"stopped orphan {name}")
                if slurm.available():
                    for name in asyncio.run(slurm.sweep_orphans(slurm.state_store(self.cnt))):
                        print(f"cancelled orphan job {name}")
            if self.warm:
                for name in asyncio.run(manager.stop_warm_of_any_server()):
                    print(f"stopped warm {name}")
            if self.orphans or self.warm:
                return
            if not self.extra_args:
                self.fail("give instance names, --orphans or --warm")
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
