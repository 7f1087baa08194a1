"""``jupyter condatainer env``: create, change and delete envs; history, export/lock, rollback, freeze.

    jupyter condatainer env create NAME [PACKAGE …] [--channel C] [--size MB] [--kernel]
    jupyter condatainer env install|remove NAME SPEC … [--channel C]
    jupyter condatainer env resize NAME --size MB
    jupyter condatainer env delete NAME
    jupyter condatainer env history NAME [--json]
    jupyter condatainer env export NAME [--format yml|lock] [--revision N] [--output FILE]
    jupyter condatainer env rollback NAME REVISION
    jupyter condatainer env freeze NAME --to FROZEN/VERSION [--revision N] [--no-kernel]

The same operations as the REST API and the panel (``kernel_provider.envs.lifecycle``/``.freeze``).
Changes run in one-shot containers; they are refused while another container (a kernel, a
CondaTainer shell) has the env mounted.
"""

from __future__ import annotations

import asyncio
import json
import sys

from traitlets import Bool, Int, List, Unicode

from kernel_provider.cli.base import Command, CommandGroup, subcommand_table
from kernel_provider.envs.operations import EnvOperations
from kernel_provider.incontainer.envlock import EnvBusyError
from kernel_provider.incontainer.history import HistoryError
from kernel_provider.model.overlays import OverlayError

CLI_ERRORS = (EnvBusyError, HistoryError, OverlayError, OSError, ValueError, RuntimeError)


class PrintReporter:
    """Job progress on the terminal."""

    def log(self, line: str) -> None:
        print(f"  {line}", flush=True)

    def step(self, progress: float, message: str) -> None:
        print(f"[{int(progress * 100):3d}%] {message}", flush=True)

    def point_of_no_return(self) -> None:
        pass


class _EnvCommand(Command):
    def operations(self) -> EnvOperations:
        ops = EnvOperations(self.cnt)
        ops.via = "jupyter condatainer env"
        return ops

    def lifecycle(self):
        from kernel_provider.envs.lifecycle import Lifecycle

        return Lifecycle(self.operations(), via="jupyter condatainer env")

    def run(self, function, *args):
        try:
            result = function(*args)
            return asyncio.run(result) if asyncio.iscoroutine(result) else result
        except CLI_ERRORS as err:
            self.fail(str(err))


class HistoryApp(_EnvCommand):
    description = """Show an env's revisions: time, user, command, packages added/removed/changed.

Revision 0 is the env's creation; every install, update, remove or rollback adds one."""
    examples = """
jupyter condatainer env history bio
jupyter condatainer env history bio --json
"""

    json_output = Bool(False, config=True, help="Print JSON.")
    flags = {"json": ({"HistoryApp": {"json_output": True}}, "Print JSON.")}
    arguments = (1, 1)
    usage = "env history NAME [--json]"

    def main(self) -> None:
        from kernel_provider.incontainer.history import format_history

        (name,) = self.extra_args
        revisions = self.run(self.lifecycle().history, name)
        if self.json_output:
            print(json.dumps([r.to_json() for r in revisions], indent=1))
        else:
            print(format_history(revisions))


class ExportApp(_EnvCommand):
    description = """Print (or write) an environment.yml or an @EXPLICIT lock of a revision.

yml: the requested specs and channels, to rebuild a similar env; lock: every package's URL
and md5, to rebuild exactly this one (micromamba create --file)."""
    examples = """
jupyter condatainer env export bio
jupyter condatainer env export bio --format lock --revision 2 --output bio-rev2.lock
"""

    format = Unicode("yml", config=True, help="yml (requested specs + channels) or lock (@EXPLICIT, URLs + md5).")
    revision = Int(-1, config=True, help="Revision number (default: the latest).")
    output = Unicode("", config=True, help="Write to this file instead of printing.")
    aliases = {"format": "ExportApp.format", "revision": "ExportApp.revision", "output": "ExportApp.output"}
    arguments = (1, 1)
    usage = "env export NAME [--format yml|lock] [--revision N] [--output FILE]"

    def main(self) -> None:
        (name,) = self.extra_args
        revision = None if self.revision < 0 else self.revision
        filename, text = self.run(self.lifecycle().export, name, self.format, revision)
        if self.output:
            with open(self.output, "w", encoding="utf-8") as handle:
                handle.write(text)
            print(f"wrote {self.output}", file=sys.stderr)
        else:
            sys.stdout.write(text)


class RollbackApp(_EnvCommand):
    description = """Roll an env back to a revision's exact package set (recorded as a new revision).

Refused while another container (a kernel, a CondaTainer shell) has the env mounted."""
    examples = """
jupyter condatainer env rollback bio 2    # the revisions: jupyter condatainer env history bio
"""

    arguments = (2, 2)
    usage = "env rollback NAME REVISION"

    def main(self) -> None:
        name, revision = self.extra_args
        if not revision.isdigit():
            self.fail(f"revision must be a number, not {revision!r} (see: jupyter condatainer env history {name})")
        lifecycle = self.lifecycle()
        self.run(lifecycle.check_revision, name, int(revision))
        print(self.run(lifecycle.rollback, PrintReporter(), name, int(revision)))


class FreezeApp(_EnvCommand):
    description = """Freeze an env (or a revision) into a read-only NAME--VERSION.sqf overlay (and a kernel).

The overlay holds exactly the revision's packages; it gets the kernel
'CondaTainer: FROZEN/VERSION (frozen)' unless --no-kernel."""
    examples = """
jupyter condatainer env freeze bio --to bio-frozen/1.0
jupyter condatainer env freeze bio --to bio-frozen/0.9 --revision 2 --no-kernel
"""

    to = Unicode("", config=True, help="The frozen overlay's name/version, e.g. myenv/1.0 (file myenv--1.0.sqf).")
    revision = Int(-1, config=True, help="Revision to freeze (default: the latest).")
    no_kernel = Bool(False, config=True, help="Do not register a kernelspec for it.")
    aliases = {"to": "FreezeApp.to", "revision": "FreezeApp.revision"}
    flags = {"no-kernel": ({"FreezeApp": {"no_kernel": True}}, "Do not register a kernelspec.")}
    arguments = (1, 1)
    usage = "env freeze NAME --to FROZEN/VERSION [--revision N] [--no-kernel]"

    def main(self) -> None:
        from kernel_provider.envs import freeze

        (name,) = self.extra_args
        frozen, _, version = self.to.partition("/")
        if not frozen or not version:
            self.fail(f"usage: {self.usage_line()}  (e.g. --to {name.split('/')[0]}-frozen/1.0)")
        revision = None if self.revision < 0 else self.revision
        ops = self.operations()
        self.run(freeze.check_target, ops, name, frozen, version)
        self.run(self.lifecycle().check_revision, name, revision)
        print(
            self.run(
                freeze.freeze,
                ops,
                PrintReporter(),
                name,
                frozen,
                version,
                revision,
                not self.no_kernel,
                "jupyter condatainer env",
            )
        )


class CreateApp(_EnvCommand):
    description = """Create a writable conda env NAME.img (and, with --kernel, its kernel).

The same operation as "New env" in the panel: built in a hidden work file and linked into
the first writable image directory only when it is complete. Packages default to zlib
(CondaTainer's minimal env); channels to conda-forge (through the channel alias)."""
    examples = """
jupyter condatainer env create bio numpy samtools --kernel
jupyter condatainer env create tools zlib --channel file:///srv/conda/conda-forge --size 2048
"""

    size = Int(1024, config=True, help="Largest size the env may grow to, in MB (the file is sparse).")
    channel = List(
        Unicode(), config=True, help="Channel (repeatable): a name, or a URL such as file:///dir/conda-forge."
    )
    kernel = Bool(False, config=True, help="Also register the kernel 'CondaTainer: NAME (env)'.")
    aliases = {"size": "CreateApp.size", "channel": "CreateApp.channel"}
    flags = {"kernel": ({"CreateApp": {"kernel": True}}, "Also register the env's kernel.")}
    arguments = (1, None)
    usage = "env create NAME [PACKAGE …] [--channel C] [--size MB] [--kernel]"

    def main(self) -> None:
        name, *packages = self.extra_args
        ops = self.operations()
        self.run(ops.check_create, name, self.size)
        print(self.run(ops.create, PrintReporter(), name, self.size, packages, self.channel, self.kernel))


class _ChangeApp(_EnvCommand):
    verb = ""
    channel = List(Unicode(), config=True, help="Channel (repeatable), searched before the env's own.")
    arguments = (2, None)

    def main(self) -> None:
        name, *specs = self.extra_args
        print(self.run(self.operations().change, PrintReporter(), name, self.verb, specs, self.channel))


class InstallApp(_ChangeApp):
    description = """Install packages into an env (mm-install), as the panel and %condatainer install do.

Through the instance of a running kernel of this user that has the env mounted writable,
else on a copy that replaces the env only when the install succeeded."""
    examples = """
jupyter condatainer env install bio numpy "pandas>=2"
jupyter condatainer env install bio demo-tool --channel file:///srv/conda/conda-forge
"""
    verb = "install"
    aliases = {"channel": "InstallApp.channel"}
    usage = "env install NAME SPEC [SPEC …] [--channel C]"


class RemoveApp(_ChangeApp):
    description = """Remove packages from an env (mm-remove), as the panel and %condatainer remove do.

The env is changed all or nothing, like an install."""
    examples = """
jupyter condatainer env remove bio numpy
"""
    verb = "remove"
    aliases = {"channel": "RemoveApp.channel"}
    usage = "env remove NAME PACKAGE [PACKAGE …]"


class ResizeApp(_EnvCommand):
    description = """Grow an env's .img to SIZE MiB, as condatainer overlay resize and the panel's "Grow…" do.

Checked, extended and checked again on a copy that replaces the env only when every step worked.
Refused while any container (a kernel, a CondaTainer shell) has the env mounted."""
    examples = """
jupyter condatainer env resize bio --size 4096
"""
    size = Int(0, config=True, help="The env's new size in MiB (bigger than now; the file is sparse).")
    aliases = {"size": "ResizeApp.size"}
    arguments = (1, 1)
    usage = "env resize NAME --size MB"

    def main(self) -> None:
        from kernel_provider.envs import disk

        (name,) = self.extra_args
        if self.size <= 0:
            self.fail(f"give the new size in MiB: {self.usage_line()}")
        print(self.run(disk.grow, self.operations(), PrintReporter(), name, self.size))


class DeleteApp(_EnvCommand):
    description = """Delete an env (or overlay) and its sidecar, and the kernels made for it.

Refused while any container has it open (a notebook's kernel, a CondaTainer shell): the
message names the notebooks."""
    examples = """
jupyter condatainer env delete bio
"""
    arguments = (1, 1)
    usage = "env delete NAME"

    def main(self) -> None:
        (name,) = self.extra_args
        self.run(self.operations().delete, name)
        print(f"deleted {name}")


class EnvApp(CommandGroup):
    name = "jupyter-condatainer env"
    description = """Create, change and delete envs; their history, export, rollback and freeze.

The same operations as the REST API and the panel. Changes run in one-shot containers; they
are refused while another container (a kernel, a CondaTainer shell) has the env mounted."""
    examples = """
jupyter condatainer env create bio numpy --kernel
jupyter condatainer env install bio pandas
jupyter condatainer env resize bio --size 4096
jupyter condatainer env history bio
jupyter condatainer env export bio --format lock
jupyter condatainer env rollback bio 2
jupyter condatainer env freeze bio --to bio-frozen/1.0
"""
    subcommands = subcommand_table(
        create=CreateApp,
        install=InstallApp,
        remove=RemoveApp,
        resize=ResizeApp,
        delete=DeleteApp,
        history=HistoryApp,
        export=ExportApp,
        rollback=RollbackApp,
        freeze=FreezeApp,
    )
