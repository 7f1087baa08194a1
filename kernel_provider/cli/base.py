"""The base of every ``jupyter condatainer`` command: configuration, the catalog, one-line errors, help."""

from __future__ import annotations

import re
import sys
import textwrap

from jupyter_core.application import JupyterApp

from kernel_provider import __version__
from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.kernel.provisioner import CondaTainerProvisioner
from kernel_provider.kernel.provisioner_base import CondaTainerProvisionerBase
from kernel_provider.kernel.slurm_provisioner import CondaTainerSlurmProvisioner
from kernel_provider.model.overlays import Catalog, scan

CONFIG_FILE_NAME = "jupyter_condatainer_config"


class Command(JupyterApp):
    version = __version__
    # What --help-all and --generate-config show besides the command's own options: the
    # settings every command reads, and the kernels' options (set per kernelspec or in config).
    classes = [CondaTainerConfig, CondaTainerProvisionerBase, CondaTainerProvisioner, CondaTainerSlurmProvisioner]

    def _config_file_name_default(self) -> str:
        """Every command reads the file ``--generate-config`` writes (beside ``jupyter_config``)."""
        return CONFIG_FILE_NAME

    # How many arguments besides options the command takes: (fewest, most; None for any number).
    arguments: tuple[int, int | None] = (0, 0)
    usage = ""  # the command line after "jupyter condatainer", for the refusal of wrong arguments

    def start(self) -> None:
        """A subcommand, or ``--generate-config``, instead of this command's own work (then stop).

        Our errors (a refusal, a tool that failed) end the command with their message and exit
        code 1, never a traceback.
        """
        super().start()
        self.check_arguments()
        try:
            self.main()
        except (RuntimeError, OSError, ValueError) as err:
            self.fail(str(err))

    def check_arguments(self) -> None:
        """Refuse a wrong number of arguments (an extra word is usually a typo or a missing ``--``)."""
        fewest, most = self.arguments
        given = len(self.extra_args)
        if most is not None and given > most:
            extra = " ".join(repr(a) for a in self.extra_args[most:])
            self.fail(f"unexpected argument{'s' if given - most > 1 else ''} {extra}; usage: {self.usage_line()}")
        if given < fewest:
            self.fail(f"usage: {self.usage_line()}")

    def usage_line(self) -> str:
        """``jupyter condatainer … ARGS``: the command line this command expects."""
        return f"jupyter condatainer {self.usage}".strip()

    def main(self) -> None:
        """The command's own work."""
        raise NotImplementedError

    @property
    def cnt(self) -> CondaTainerConfig:
        return CondaTainerConfig(parent=self)

    def catalog(self) -> Catalog:
        return scan(self.cnt.image_dirs, self.cnt.distro)

    def fail(self, message: str) -> None:
        """End the command with exit code 1 and ``message`` on stderr, as it is: its first line
        says what happened and what to do, the lines after it are detail."""
        print(f"error: {message}", file=sys.stderr, flush=True)
        self.exit(1)

    def emit_description(self):
        """The one-line summary, then the examples, then the rest of the description: what a
        reader looks for first, before the option lists."""
        summary, *rest = wrap_paragraphs(self.description)
        yield summary
        yield ""
        yield from super().emit_examples()
        for paragraph in rest:
            yield paragraph
            yield ""

    def emit_examples(self):
        """Nothing: the examples are shown after the description (see :meth:`emit_description`)."""
        yield from ()


def wrap_paragraphs(text: str, width: int = 80) -> list[str]:
    """Paragraphs filled to ``width`` without breaking at hyphens, unlike traitlets' help: names
    such as ``condatainer-NAME`` or ``--generate-config`` stay whole. A paragraph with indented
    lines is kept as written (a table)."""
    paragraphs = re.split(r"\n\s*\n", textwrap.dedent(text).strip())
    return [
        paragraph if re.search(r"\n\s", paragraph) else textwrap.fill(paragraph, width, break_on_hyphens=False)
        for paragraph in paragraphs
    ]


def subcommand_table(**apps: type[Command]) -> dict[str, tuple[type[Command], str]]:
    """traitlets' ``subcommands`` for these commands, each listed with its description's first line."""
    return {name: (app, app.description.splitlines()[0]) for name, app in apps.items()}


class CommandGroup(Command):
    """A command made of subcommands."""

    arguments = (0, None)  # an unknown subcommand is refused by main

    def main(self) -> None:
        """Reached only without a known subcommand: say which there are."""
        if self.extra_args:
            self.fail(f"unknown command {self.extra_args[0]!r}; {self.command_choices()}")
        self.print_description()
        self.print_subcommands()
        self.fail(f"give a command: {self.command_choices()}")

    def command_choices(self) -> str:
        """The subcommands, and how to learn about each."""
        return f"use one of {', '.join(self.subcommands)} (each with --help)"
