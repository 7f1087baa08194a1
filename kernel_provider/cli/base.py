"""The base of every ``jupyter condatainer`` command: configuration, the catalog, one-line errors."""

from __future__ import annotations

from jupyter_core.application import JupyterApp

from kernel_provider import __version__
from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.model.overlays import Catalog, scan


class Command(JupyterApp):
    version = __version__

    @property
    def cnt(self) -> CondaTainerConfig:
        return CondaTainerConfig(parent=self)

    def catalog(self) -> Catalog:
        return scan(self.cnt.image_dirs, self.cnt.distro)

    def fail(self, message: str) -> None:
        self.log.critical(message)
        self.exit(1)


class CommandGroup(Command):
    """A command made of subcommands."""

    def start(self) -> None:
        if self.subapp is None:
            self.print_subcommands()
            self.exit(1)
        self.subapp.start()
