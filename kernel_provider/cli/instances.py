"""``jupyter condatainer instances``: list and stop the Apptainer instances of CondaTainer kernels."""

from __future__ import annotations

import asyncio
import json

from traitlets import Bool

from kernel_provider.cli.base import Command, CommandGroup, subcommand_table
from kernel_provider.host.instances import InstanceManager
from kernel_provider.host.process import InstanceError


class ListInstancesApp(Command):
    description = """List this user's jupyter-condatainer instances (state files and running).

An instance whose server is gone is an ORPHAN: instances stop --orphans stops it."""
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
                "warm": r.warm,
                "overlays": r.overlays,
            }
            for r in manager.store.ours()
        ]
        if self.json_output:
            print(json.dumps(rows, indent=1))
            return
        for row in rows:
            state = "running" if row["running"] else "stopped"
            owner = "owner alive" if row["owner_alive"] else "ORPHAN"
            warm = " warm (idle, kept for the next kernel)" if row["warm"] else ""
            print(f"{row['name']:28} {state:8} {owner:12} kernels={len(row['kernels'])}{warm}")


class StopInstancesApp(Command):
    description = """Stop instances by name, every orphan left by a crashed server (--orphans), or the
warm ones: idle instances a server keeps for the next kernel of their stack (--warm).

Only this user's instances of jupyter-condatainer are stopped (known by their state files),
never one started by hand or by another user."""
    examples = """
jupyter condatainer instances stop --orphans
jupyter condatainer instances stop --warm      # e.g. before condatainer rm of an image they hold
jupyter condatainer instances stop jct-3f2a-1a2b3c4d-9e8f7a    # a name from: instances list
"""

    orphans = Bool(False, config=True, help="Stop instances whose server is gone.")
    warm = Bool(False, config=True, help="Stop the idle instances servers keep warm (no kernel in them).")
    flags = {
        "orphans": ({"StopInstancesApp": {"orphans": True}}, "Stop orphaned instances."),
        "warm": ({"StopInstancesApp": {"warm": True}}, "Stop warm (idle) instances."),
    }

    def main(self) -> None:
        manager = InstanceManager.for_config(self.cnt)
        try:
            if self.orphans:
                for name in asyncio.run(manager.sweep_orphans()):
                    print(f"stopped orphan {name}")
            if self.warm:
                for name in asyncio.run(manager.stop_warm_of_any_server()):
                    print(f"stopped warm {name}")
            if self.orphans or self.warm:
                return
            if not self.extra_args:
                self.fail("give instance names, --orphans or --warm")
            for name in self.extra_args:
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
