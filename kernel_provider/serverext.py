"""The jupyter_server extension: housekeeping at start, REST API for overlays.

At start it cleans up instances left by a crashed server and syncs the
kernelspecs with the image directories, so a user sees the stacks that exist.
"""

from __future__ import annotations

from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool

from .config import CondaTainerConfig
from .instance import InstanceError, InstanceManager
from .kernelspecs import KernelspecStore
from .overlays import scan


class CondaTainerExtension(ExtensionApp):
    name = "kernel_provider"

    sync_kernelspecs = Bool(
        True, config=True, help="Write/refresh our kernelspecs from the image directories when the server starts."
    )
    sweep_orphans = Bool(
        True, config=True, help="Stop instances left by a crashed server (ours only) when the server starts."
    )

    @property
    def condatainer(self) -> CondaTainerConfig:
        return CondaTainerConfig(parent=self.serverapp)

    def initialize_settings(self) -> None:
        config = self.condatainer
        if self.sync_kernelspecs:
            result = KernelspecStore().sync(scan(config.image_dirs, config.distro))
            self.log.info("CondaTainer kernelspecs: %d written, %d removed", len(result.written), len(result.removed))

    async def _start_jupyter_server_extension(self, serverapp) -> None:
        if not self.sweep_orphans:
            return
        try:
            swept = await InstanceManager.for_config(self.condatainer).sweep_orphans()
        except InstanceError as err:
            self.log.warning("CondaTainer orphan sweep failed: %s", err)
            return
        if swept:
            self.log.info("CondaTainer: stopped %d orphaned instance(s): %s", len(swept), ", ".join(swept))
