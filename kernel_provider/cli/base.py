"""The base of every ``jupyter condatainer`` command: configuration, the catalog, one-line errors, help."""

from __future__ import annotations

import re
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

    def start(self) -> None:
        """A subcommand, or ``--generate-config``, instead of this command's own work (then stop)."""
        super().start()
        self.main()

    def main(self) -> None:
        """The command's own work."""
        raise NotImplementedError

    @property
    def cnt(self) -> CondaTainerConfig:
        return CondaTainerConfig(parent=self)

    def catalog(self) -> Catalog:
        return scan(self.cnt.image_dirs, self.cnt.distro)

    def fail(self, message: str) -> None:
        self.log.critical(message)
        self.exit(1)

    def emit_description(self):
        """The description, then the examples: what a reader looks for before the option lists."""
        for paragraph in wrap_paragraphs(self.description):
            yield paragraph
            yield ""
        yield from super().emit_examples()

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
