"""``jupyter condatainer``: kernelspecs and instances from the command line.

    jupyter condatainer kernelspecs sync
    jupyter condatainer kernelspecs list
    jupyter condatainer kernelspecs add NAME --overlay python/3.11 [--overlay X] [--env my.img]
    jupyter condatainer kernelspecs add NAME --overlay python/3.11 --slurm [--slurm-arg=--partition=debug …]
    jupyter condatainer kernelspecs remove NAME
    jupyter condatainer instances list
    jupyter condatainer instances stop NAME | --orphans
    jupyter condatainer env history|export|rollback|freeze NAME …   (kernel_provider/env_cli.py)
"""

from __future__ import annotations

import asyncio
import json
import sys

from jupyter_core.application import JupyterApp
from traitlets import Bool, List, Unicode

from . import __version__
from .config import CondaTainerConfig
from .instance import InstanceError, InstanceManager
from .kernelspecs import KernelspecStore, custom_spec, kernel_name
from .overlays import OverlayError, looks_like_path, resolve, scan
from .slurm import SlurmError, check_sbatch_args


class _Base(JupyterApp):
    version = __version__

    @property
    def cnt(self) -> CondaTainerConfig:
        return CondaTainerConfig(parent=self)

    def catalog(self):
        return scan(self.cnt.image_dirs, self.cnt.distro)

    def fail(self, message: str) -> None:
        self.log.critical(message)
        self.exit(1)


class _Group(_Base):
    """A command made of subcommands."""

    def start(self) -> None:
        if self.subapp is None:
            self.print_subcommands()
            self.exit(1)
        self.subapp.start()


class SyncApp(_Base):
    description = "Write a kernelspec for every Python overlay; remove our stale ones."

    def start(self) -> None:
        result = KernelspecStore().sync(self.catalog())
        for name in result.written:
            print(f"written   {name}")
        for name in result.removed:
            print(f"removed   {name}")
        print(f"{len(result.written) + len(result.unchanged)} CondaTainer kernelspecs")


class ListSpecsApp(_Base):
    description = "List the CondaTainer kernelspecs."

    def start(self) -> None:
        for name, spec in sorted(KernelspecStore().read_all().items()):
            print(f"{name:40} {spec.display_name:40} {' '.join(spec.overlays)}")


class AddApp(_Base):
    description = "Add a kernelspec for a custom stack: jupyter condatainer kernelspecs add NAME --overlay X …"

    overlay = List(Unicode(), config=True, help="Overlay (repeatable), in CondaTainer syntax.")
    env = Unicode("", config=True, help="A writable env .img (mounted rw; kernels share one instance).")
    base_image = Unicode("", config=True, help="Base .sif (default: the distro's base image).")
    read_only = Bool(False, config=True, help="Mount the env .img read-only.")
    slurm = Bool(False, config=True, help="Run the kernel in a SLURM job on a compute node (display name '… (SLURM)').")
    slurm_arg = List(
        Unicode(), config=True, help="sbatch option for --slurm kernels (repeatable): --slurm-arg=--partition=debug"
    )
    slurm_connect_ip = Unicode(
        "", config=True, help="Address a --slurm kernel listens on: 'node' (the job's node) or an IP; default 127.0.0.1."
    )
    aliases = {
        "overlay": "AddApp.overlay",
        "env": "AddApp.env",
        "base-image": "AddApp.base_image",
        "slurm-arg": "AddApp.slurm_arg",
        "slurm-connect-ip": "AddApp.slurm_connect_ip",
    }
    flags = {
        "read-only": ({"AddApp": {"read_only": True}}, "Mount the env .img read-only."),
        "slurm": ({"AddApp": {"slurm": True}}, "Run the kernel in a SLURM job on a compute node."),
    }

    def start(self) -> None:
        if len(self.extra_args) != 1:
            self.fail("usage: jupyter condatainer kernelspecs add NAME --overlay python/3.11 [--env my.img]")
        overlays = list(self.overlay) + ([self.env] if self.env else [])
        if not overlays:
            self.fail("give at least one --overlay or --env")
        catalog = self.catalog()
        try:
            resolved = [resolve_spec(o, catalog) for o in overlays]
        except OverlayError as err:
            self.fail(str(err))
        writable = bool(self.env) and not self.read_only
        spec = custom_spec(
            resolved, label=self.extra_args[0], base_image=self.base_image, writable=writable,
            share=writable and not self.slurm, extra_config=self.slurm_config(),
        )
        path = KernelspecStore().write(spec)
        print(f"{spec.name} → {path}")

    def slurm_config(self) -> dict:
        """Provisioner options of a ``--slurm`` kernel (none for a local one)."""
        if not self.slurm:
            if self.slurm_arg or self.slurm_connect_ip:
                self.fail("--slurm-arg and --slurm-connect-ip need --slurm")
            return {}
        config: dict = {"launcher": "slurm"}
        if self.slurm_arg:
            try:
                config["slurm_args"] = check_sbatch_args(self.slurm_arg)
            except SlurmError as err:
                self.fail(str(err))
        if self.slurm_connect_ip:
            config["slurm_connect_ip"] = self.slurm_connect_ip
        return config


def resolve_spec(spec: str, catalog) -> str:
    """Check a spec; keep names as names (portable), make paths absolute."""
    overlay = resolve(spec, catalog)
    return overlay.path if looks_like_path(spec) else spec


class RemoveSpecApp(_Base):
    description = "Remove one of our kernelspecs."

    def start(self) -> None:
        for name in self.extra_args:
            KernelspecStore().remove(name if name.startswith("condatainer-") else kernel_name(name))


class KernelspecsApp(_Group):
    description = "Manage CondaTainer kernelspecs."
    subcommands = {
        "sync": (SyncApp, SyncApp.description),
        "list": (ListSpecsApp, ListSpecsApp.description),
        "add": (AddApp, AddApp.description),
        "remove": (RemoveSpecApp, RemoveSpecApp.description),
    }


class ListInstancesApp(_Base):
    description = "List this user's jupyter-condatainer instances (state files and running)."

    json_output = Bool(False, config=True, help="Print JSON.")
    flags = {"json": ({"ListInstancesApp": {"json_output": True}}, "Print JSON.")}

    def start(self) -> None:
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
        if self.json_output:
            print(json.dumps(rows, indent=1))
            return
        for row in rows:
            state = "running" if row["running"] else "stopped"
            owner = "owner alive" if row["owner_alive"] else "ORPHAN"
            print(f"{row['name']:28} {state:8} {owner:12} kernels={len(row['kernels'])}")


class StopInstancesApp(_Base):
    description = "Stop instances by name, or every orphan left by a crashed server (--orphans)."

    orphans = Bool(False, config=True, help="Stop instances whose server is gone.")
    flags = {"orphans": ({"StopInstancesApp": {"orphans": True}}, "Stop orphaned instances.")}

    def start(self) -> None:
        manager = InstanceManager.for_config(self.cnt)
        try:
            if self.orphans:
                for name in asyncio.run(manager.sweep_orphans()):
                    print(f"stopped orphan {name}")
                return
            if not self.extra_args:
                self.fail("give instance names or --orphans")
            for name in self.extra_args:
                asyncio.run(manager.stop_by_name(name))
                print(f"stopped {name}")
        except InstanceError as err:
            self.fail(str(err))


class InstancesApp(_Group):
    description = "Manage the Apptainer instances of CondaTainer kernels."
    subcommands = {
        "list": (ListInstancesApp, ListInstancesApp.description),
        "stop": (StopInstancesApp, StopInstancesApp.description),
    }


class CondaTainerApp(_Group):
    name = "jupyter-condatainer"
    description = "Jupyter kernels in CondaTainer environments on Apptainer."
    subcommands = {
        "kernelspecs": (KernelspecsApp, KernelspecsApp.description),
        "instances": (InstancesApp, InstancesApp.description),
        # Imported when used (kernel_provider/env_cli.py builds on this module's base classes).
        "env": ("kernel_provider.env_cli.EnvApp", "An env's history, export/lock, rollback and freeze."),
    }


def main() -> None:
    CondaTainerApp.launch_instance()


if __name__ == "__main__":
    sys.exit(main())
