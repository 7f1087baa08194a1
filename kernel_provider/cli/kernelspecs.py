"""``jupyter condatainer kernelspecs``: sync, list, add and remove CondaTainer kernelspecs."""

from __future__ import annotations

from traitlets import Bool, List, Unicode

from kernel_provider.cli.base import Command, CommandGroup, subcommand_table
from kernel_provider.kernel.kernelspecs import KernelspecStore, custom_spec, kernel_name
from kernel_provider.kernel.slurm import SlurmError, check_sbatch_args
from kernel_provider.model.overlays import OverlayError, looks_like_path, resolve


class SyncApp(Command):
    description = """Write a kernelspec for every Python overlay; remove our stale ones.

Every python/<version> overlay in the image directories gets the kernel 'CondaTainer:
python/<version>'. Kernelspecs of ours whose images are gone are removed; custom ones
(kernelspecs add) stay while their images exist. The server does the same when it starts."""
    examples = """
jupyter condatainer kernelspecs sync
jupyter condatainer kernelspecs sync --CondaTainerConfig.image_dirs=/shared/condatainer/images
"""

    def main(self) -> None:
        result = KernelspecStore().sync(self.catalog())
        for name in result.written:
            print(f"written   {name}")
        for name in result.removed:
            print(f"removed   {name}")
        print(f"{len(result.written) + len(result.unchanged)} CondaTainer kernelspecs")


class ListSpecsApp(Command):
    description = """List the CondaTainer kernelspecs.

One line each: the kernelspec name, the name shown in Jupyter, the overlays of its stack."""
    examples = """
jupyter condatainer kernelspecs list
"""

    def main(self) -> None:
        for name, spec in sorted(KernelspecStore().read_all().items()):
            print(f"{name:40} {spec.display_name:40} {' '.join(spec.overlays)}")


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

    def main(self) -> None:
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

    def main(self) -> None:
        for name in self.extra_args:
            KernelspecStore().remove(name if name.startswith("condatainer-") else kernel_name(name))


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
