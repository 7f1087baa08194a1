"""``POST /condatainer/api/kernels/ID/terminal``: a JupyterLab terminal whose shell runs in the kernel's container.

The terminal is one of jupyter_server's own (jupyter_server_terminals, terminado): created here
with the kernel's shell command instead of the server's default shell, then opened by the client
like any terminal (``terminal:open`` with its name). Its shell is
:meth:`~kernel_provider.kernel.provisioner_base.CondaTainerProvisionerBase.shell_argv`: an
``apptainer exec`` into the kernel's own instance with the kernel's environment, so ``which
python``, ``pip list`` and the env's tools are what the notebook sees. It ends when the
kernel shuts down: the instance stops (Apptainer stops everything inside), and a shared instance
that other kernels keep running loses the terminal all the same (:class:`KernelTerminals`).
"""

from __future__ import annotations

from collections import defaultdict

from jupyter_events import EventLogger
from jupyter_server.auth.decorator import authorized
from tornado import web

from kernel_provider.host.process import apptainer_env
from kernel_provider.kernel.provisioner_base import CondaTainerProvisionerBase
from kernel_provider.server.handlers import BaseHandler

KERNEL_ACTIONS = "https://events.jupyter.org/jupyter_server/kernel_actions/v1"


class KernelTerminals:
    """Which terminals belong to which kernel, so a kernel's shutdown closes its terminals."""

    def __init__(self, settings: dict):
        self.settings = settings
        self.by_kernel: defaultdict[str, set[str]] = defaultdict(set)

    def install(self, event_logger: EventLogger) -> None:
        """Follow the server's kernel actions (jupyter_server emits one per shutdown)."""
        event_logger.add_listener(schema_id=KERNEL_ACTIONS, listener=self._on_kernel_action)

    async def _on_kernel_action(self, logger: EventLogger, schema_id: str, data: dict) -> None:
        if data.get("action") != "shutdown" or data.get("status") != "success":
            return
        terminals = self.settings.get("terminal_manager")
        for name in self.by_kernel.pop(data.get("kernel_id", ""), set()):
            if terminals is not None and name in terminals.terminals:
                await terminals.terminate(name, force=True)


class KernelTerminalHandler(BaseHandler):
    """``/condatainer/api/kernels/ID/terminal``: a terminal in the kernel's container."""

    @web.authenticated
    @authorized
    async def post(self, kernel_id: str) -> None:
        """Create the terminal: 201 and jupyter_server's terminal model (``name``); 404 for no such
        kernel, 400 when it is not a CondaTainer kernel or not running, 503 without terminals."""
        terminals = self.settings.get("terminal_manager")
        if terminals is None:
            raise web.HTTPError(503, "this Jupyter server has terminals disabled (ServerApp.terminals_enabled)")
        try:
            km = self.kernel_manager.get_kernel(kernel_id)
        except KeyError:
            raise web.HTTPError(404, f"no kernel {kernel_id}") from None
        provisioner = km.provisioner
        if not isinstance(provisioner, CondaTainerProvisionerBase):
            raise web.HTTPError(400, "not a CondaTainer kernel: open an ordinary terminal instead")
        try:
            argv = provisioner.shell_argv()
        except ValueError as err:
            raise web.HTTPError(400, str(err)) from None
        model = terminals.create(shell_command=argv, extra_env=apptainer_env(), cwd=provisioner.cwd)
        self.settings["condatainer_terminals"].by_kernel[kernel_id].add(model["name"])
        self.set_status(201)
        self.finish(model)


ROUTES = [(r"/condatainer/api/kernels/(?P<kernel_id>[0-9a-f-]+)/terminal", KernelTerminalHandler)]
