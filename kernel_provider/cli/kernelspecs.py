"""``jupyter condatainer kernelspecs``: sync, list, add and remove CondaTainer kernelspecs."""

from __future__ import annotations

from traitlets import Bool, List, Unicode

from kernel_provider.cli.base import Command, CommandGroup, subcommand_table
from kernel_provider.kernel.kernelspecs import KernelspecStore, custom_spec, kernel_name
from kernel_provider.kernel.slurm import SlurmError, check_sbatch_args
from kernel_provider.kernel.stackcheck import StackProblem, check_stack
from kernel_provider.model.overlays import OverlayError, OverlayNotFoundError, looks_like_path, resolve


class SyncApp(Command):
    description = """Write a kernelspec for every Python overlay; remove our stale ones.

Every python/<version> overlay in the image directories gets the kernel 'CondaTainer:
python/<version>'. Kernelspecs of ours whose images are gone are removed; custom ones
(kernelspecs add) stay while their images exist. The server does the same when it starts."""
    examples = """
jupyter condatainer kernelspecs sync
jupyter condatainer kernelspecs sync --CondaTainerConfig.image_dirs=/shared/condatainer/images
"""

    usage = "kernelspecs sync"

    def main(self) -> None:
        result = KernelspecStore().sync(self.catalog())
        for name in result.written:
            print(f"written   {name}")
        for name in result.removed:
            print(f"removed   {name}")
        for name, reason in result.broken.items():
            print(
                f"broken    {name}: {reason} (kept; fix its images or: jupyter condatainer kernelspecs remove {name})"
            )
        print(f"{len(result.written) + len(result.unchanged)} CondaTainer kernelspecs")


class ListSpecsApp(Command):
    description = """List the CondaTainer kernelspecs.

One line each: the kernelspec name, the name shown in Jupyter, the overlays of its stack."""
    examples = """
jupyter condatainer kernelspecs list
"""

    usage = "kernelspecs list"

    def main(self) -> None:
        specs = sorted(KernelspecStore().read_all().items())
        if not specs:
            print("none (jupyter condatainer kernelspecs sync writes one per python/<version> overlay)")
            return
        print(f"{'KERNELSPEC':40} {'SHOWN AS':40} OVERLAYS")
        for name, spec in specs:
            broken = f"  BROKEN: {spec.broken}" if spec.broken else ""
            print(f"{name:40} {spec.display_name:40} {' '.join(spec.overlays)}{broken}")


class AddApp(Command):
    description = """Add a kernelspec for a custom stack of overlays, an env, or a kernel on SLURM.

NAME becomes the kernel 'CondaTainer: NAME' (kernelspec condatainer-NAME). Overlays are
CondaTainer names (python/3.11, samtools) or paths. --env adds a writable .img env: the
stack's kernels share one instance, and packages installed in a kernel stay in the env.
--slurm runs each kernel in a SLURM job on a compute node ('CondaTainer: NAME (SLURM)')."""
    examples = """
jupyter condatainer kernelspecs add bio --overlay python/3.11 --overlay samtools --env ~/envs/bio.img
jupyter condatainer kernelspecs add bio-ro --overlay python/3.11 --env ~/envs/bio.img --read-only
jupyter condatainer kernelspecs add py311 --overlay python/3.11 --slurm --slurm-arg=--partition=debug
"""

    overlay = List(Unicode(), config=True, help="Overlay (repeatable), in CondaTainer syntax.")
    env = Unicode("", config=True, help="A writable env .img (mounted rw; kernels share one instance).")
    base_image = Unicode("", config=True, help="Base .sif (default: the distro's base image).")
    read_only = Bool(False, config=True, help="Mount the env .img read-only.")
    slurm = Bool(False, config=True, help="Run the kernel in a SLURM job on a compute node (display name '… (SLURM)').")
    slurm_arg = List(
        Unicode(), config=True, help="sbatch option for --slurm kernels (repeatable): --slurm-arg=--partition=debug"
    )
    slurm_connect_ip = Unicode(
        "",
        config=True,
        help="Address a --slurm kernel listens on: 'node' (the job's node address; the default) or an IP.",
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

    arguments = (1, 1)
    usage = "kernelspecs add NAME --overlay python/3.11 [--env my.img]"

    def main(self) -> None:
        overlays = list(self.overlay) + ([self.env] if self.env else [])
        if not overlays:
            self.fail("give at least one --overlay or --env")
        catalog = self.catalog()
        try:
            resolved = [resolve_spec(o, catalog) for o in overlays]
            check_stack(self.cnt, catalog, overlays, self.base_image)
        except OverlayNotFoundError as err:
            available = sorted(n for n in catalog.by_name if not n.endswith("base_image"))
            self.fail(f"{err} Available: {', '.join(available) or 'none'}.")
        except (OverlayError, StackProblem) as err:
            self.fail(str(err))
        writable = bool(self.env) and not self.read_only
        spec = custom_spec(
            resolved,
            label=self.extra_args[0],
            base_image=self.base_image,
            writable=writable,
            share=writable and not self.slurm,
            slurm=self.slurm,
            extra_config=self.slurm_config(),
        )
        path = KernelspecStore().write(spec)
        print(f"{spec.name} → {path}")

    def slurm_config(self) -> dict:
        """Provisioner options of a ``--slurm`` kernel (none for a local one)."""
        if not self.slurm:
            if self.slurm_arg or self.slurm_connect_ip:
                self.fail("--slurm-arg and --slurm-connect-ip need --slurm")
            return {}
        config: dict = {}
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


class RemoveSpecApp(Command):
    description = """Remove kernelspecs of ours by name.

A NAME as given to kernelspecs add, or the kernelspec's own name (condatainer-NAME)."""
    examples = """
jupyter condatainer kernelspecs remove bio
jupyter condatainer kernelspecs remove condatainer-py311-slurm
"""

    arguments = (1, None)
    usage = "kernelspecs remove NAME [NAME …]"

    def main(self) -> None:
        store = KernelspecStore()
        ours = store.read_all()
        names = [name if name.startswith("condatainer-") else kernel_name(name) for name in self.extra_args]
        unknown = [given for given, name in zip(self.extra_args, names) if name not in ours]
        if unknown:
            self.fail(
                f"no CondaTainer kernelspec {', '.join(map(repr, unknown))}; nothing was removed. "
                f"Ours: {', '.join(sorted(ours)) or 'none'} (jupyter condatainer kernelspecs list)"
            )
        for name in names:
            store.remove(name)
            print(f"removed   {name}")


class KernelspecsApp(CommandGroup):
    name = "jupyter-condatainer kernelspecs"
    description = """Manage CondaTainer kernelspecs.

One kernel per Python overlay (sync), and kernels of custom stacks (add)."""
    examples = """
jupyter condatainer kernelspecs sync
jupyter condatainer kernelspecs add bio --overlay python/3.11 --env ~/envs/bio.img
jupyter condatainer kernelspecs list
jupyter condatainer kernelspecs remove bio
"""
    subcommands = subcommand_table(sync=SyncApp, list=ListSpecsApp, add=AddApp, remove=RemoveSpecApp)
