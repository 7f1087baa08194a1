"""``jupyter condatainer env``: an env's history, export/lock, rollback and freeze.

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

from traitlets import Bool, Int, Unicode

from kernel_provider.cli.base import Command, CommandGroup, subcommand_table
from kernel_provider.envs.operations import EnvOperations
from kernel_provider.incontainer.envlock import EnvBusyError
from kernel_provider.incontainer.history import HistoryError
from kernel_provider.model.overlays import OverlayError

CLI_ERRORS = (EnvBusyError, HistoryError, OverlayError, FileExistsError, ValueError, RuntimeError)


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

    def name_arg(self, count: int = 1, usage: str = "") -> list[str]:
        if len(self.extra_args) != count:
            self.fail(f"usage: jupyter condatainer env {usage}")
        return list(self.extra_args)

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

    def main(self) -> None:
        from kernel_provider.incontainer.history import format_history

        (name,) = self.name_arg(1, "history NAME [--json]")
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

    def main(self) -> None:
        (name,) = self.name_arg(1, "export NAME [--format yml|lock] [--revision N] [--output FILE]")
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

    def main(self) -> None:
        name, revision = self.name_arg(2, "rollback NAME REVISION")
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

    def main(self) -> None:
        from kernel_provider.envs import freeze

        usage = "freeze NAME --to FROZEN/VERSION [--revision N] [--no-kernel]"
        (name,) = self.name_arg(1, usage)
        frozen, _, version = self.to.partition("/")
        if not frozen or not version:
            self.fail(f"usage: jupyter condatainer env {usage}  (e.g. --to {name.split('/')[0]}-frozen/1.0)")
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


class EnvApp(CommandGroup):
    name = "jupyter-condatainer env"
    description = """An env's history, export/lock, rollback and freeze to a read-only overlay.

The same operations as the REST API and the panel. Changes run in one-shot containers; they
are refused while another container (a kernel, a CondaTainer shell) has the env mounted."""
    examples = """
jupyter condatainer env history bio
jupyter condatainer env export bio --format lock
jupyter condatainer env rollback bio 2
jupyter condatainer env freeze bio --to bio-frozen/1.0
"""
    subcommands = subcommand_table(history=HistoryApp, export=ExportApp, rollback=RollbackApp, freeze=FreezeApp)
