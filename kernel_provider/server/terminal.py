"""JupyterLab terminals whose shell runs in a CondaTainer stack.

- ``POST /condatainer/api/kernels/ID/terminal``: in a running kernel's container. Its shell is
  :meth:`~kernel_provider.kernel.provisioner_base.CondaTainerProvisionerBase.shell_argv`: an
  ``apptainer exec`` into the kernel's own instance with the kernel's environment (for a SLURM
  kernel, a step of its job on the node), so ``which python``, ``pip list`` and the env's tools
  are what the notebook sees. It ends when the kernel shuts down: the instance stops (Apptainer
  stops everything inside), and a shared instance that other kernels keep running loses the
  terminal all the same (:class:`Terminals`).
- ``POST /condatainer/api/overlays/NAME/terminal``: in the stack a kernel on that overlay or env
  would run, without a kernel, the env read-only (:mod:`kernel_provider.kernel.stackshell`).

Each terminal is one of jupyter_server's own (jupyter_server_terminals, terminado): created here
with our shell command instead of the server's default shell, then opened by the client like
any terminal (``terminal:open`` with its name).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from jupyter_events import EventLogger
from jupyter_server.auth.decorator import authorized
from tornado import web

from kernel_provider.host.process import apptainer_env
from kernel_provider.kernel.provisioner_base import CondaTainerProvisionerBase
from kernel_provider.kernel.stackshell import open_stack_shell
from kernel_provider.server.handlers import BaseHandler, http_errors

KERNEL_ACTIONS = "https://events.jupyter.org/jupyter_server/kernel_actions/v1"


class Terminals:
    """The terminals we made: which kernel each belongs to, so a kernel's shutdown closes its
    terminals, and which env file each stack terminal's container reads, removed once it is gone."""

    def __init__(self, settings: dict):
        self.settings = settings
        self.by_kernel: defaultdict[str, set[str]] = defaultdict(set)
        self.env_files: dict[str, Path] = {}

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

    def add_stack_terminal(self, name: str, env_file: Path) -> None:
        """Keep a stack terminal's env file until the terminal is gone (its container reads it as it starts)."""
        self.forget_ended()
        reused = self.env_files.pop(name, None)  # terminado gives an ended terminal's name to the next one
        if reused is not None:
            reused.unlink(missing_ok=True)
        self.env_files[name] = env_file

    def forget_ended(self, everything: bool = False) -> None:
        """Remove the env files of stack terminals that ended (``everything``: of all, as the server stops)."""
        terminals = self.settings.get("terminal_manager")
        running = set(terminals.terminals) if terminals is not None and not everything else set()
        for name in set(self.env_files) - running:
            self.env_files.pop(name).unlink(missing_ok=True)


def terminal_manager(settings: dict):
    """jupyter_server's terminal manager; 503 when the server runs without terminals."""
    terminals = settings.get("terminal_manager")
    if terminals is None:
        raise web.HTTPError(503, "this Jupyter server has terminals disabled (ServerApp.terminals_enabled)")
    return terminals


class KernelTerminalHandler(BaseHandler):
    """``/condatainer/api/kernels/ID/terminal``: a terminal in the kernel's container."""

    @web.authenticated
    @authorized
    async def post(self, kernel_id: str) -> None:
        """Create the terminal: 201 and jupyter_server's terminal model (``name``); 404 for no such
        kernel, 400 when it is not a CondaTainer kernel or not running, 503 without terminals."""
        terminals = terminal_manager(self.settings)
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


class StackTerminalHandler(BaseHandler):
    """``/condatainer/api/overlays/NAME/terminal``: a terminal in the stack of an overlay or env, no kernel."""

    @web.authenticated
    @authorized
    async def post(self, name: str) -> None:
        """Create the terminal, in the server's root directory: 201, jupyter_server's terminal
        model (``name``) and the terminal's first line (``banner``); 400 for a bad name or a base
        image, 404 for an unknown overlay, 409 while another container writes to the env, 503
        without terminals. A refused request creates nothing."""
        terminals = terminal_manager(self.settings)
        name = await self.overlay_name(name)
        cwd = self.serverapp.root_dir  # absolute (jupyter_server makes it so)
        with http_errors():
            shell = await open_stack_shell(self.operations, name, cwd)
        try:
            model = terminals.create(shell_command=shell.argv, extra_env=apptainer_env(), cwd=cwd)
        except OSError:  # the terminal could not start its process
            shell.env_file.unlink(missing_ok=True)
            raise
        self.settings["condatainer_terminals"].add_stack_terminal(model["name"], shell.env_file)
        self.set_status(201)
        self.finish({**model, "banner": shell.banner})


ROUTES = [
    (r"/condatainer/api/kernels/(?P<kernel_id>[0-9a-f-]+)/terminal", KernelTerminalHandler),
    (r"/condatainer/api/overlays/(?P<name>.+?)/terminal", StackTerminalHandler),
]
