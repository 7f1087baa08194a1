"""What a kernel's start did, in the server: the launch event schema, the emitter handed to
provisioners, and the REST views of a kernel's start and its container output.

Provisioners report the steps of a kernel's start to :mod:`kernel_provider.kernel.progress`;
here the extension registers the schema on jupyter_server's event bus and makes the bus the
place those steps go. ``GET /condatainer/api/kernels/ID/launch`` gives a kernel's latest start
to a client that connected after it began (a reloaded page); ``GET …/ID/logs`` its container
output (:mod:`kernel_provider.kernel.kernellog`), for a running kernel or a failed one.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from jupyter_events import EventLogger
from jupyter_server.auth.decorator import authorized
from tornado import web

from kernel_provider.kernel import kernellog, progress
from kernel_provider.server.handlers import BaseHandler

LAUNCH_SCHEMA = Path(__file__).parent / "events" / "launch.yaml"


def install(event_logger: EventLogger) -> None:
    """Register the launch schema and send every provisioner's steps onto this event bus."""
    event_logger.register_event_schema(LAUNCH_SCHEMA)
    progress.set_emitter(lambda data: event_logger.emit(schema_id=progress.LAUNCH_EVENT, data=data))


def uninstall() -> None:
    """The server stops: provisioners' steps go to the log only."""
    progress.set_emitter(None)


class LaunchHandler(BaseHandler):
    """``/condatainer/api/kernels/ID/launch``: the steps of a kernel's latest start."""

    @web.authenticated
    @authorized
    async def get(self, kernel_id: str) -> None:
        """The kernel's launch events, oldest first: 200 and the events; 404 for a kernel this
        server did not start (or started so long ago that it was forgotten)."""
        events = progress.recent(kernel_id)
        if not events:
            raise web.HTTPError(404, f"no CondaTainer kernel start known for {kernel_id}")
        self.finish({"kernel_id": kernel_id, "events": events})


class LogsHandler(BaseHandler):
    """``/condatainer/api/kernels/ID/logs``: a kernel's container output."""

    @web.authenticated
    @authorized
    async def get(self, kernel_id: str) -> None:
        """The kernel's output and its instance's Apptainer log, each its last 64 KiB: 200 and the logs;
        404 when there is none (not a CondaTainer kernel of this server, or shut down cleanly)."""
        logs = await asyncio.to_thread(kernellog.read_logs, kernel_id)
        if not logs:
            raise web.HTTPError(404, f"no container output kept for kernel {kernel_id}")
        self.finish({"kernel_id": kernel_id, "logs": logs})


_KERNEL = r"/condatainer/api/kernels/(?P<kernel_id>[0-9a-f-]+)"
ROUTES = [(rf"{_KERNEL}/launch", LaunchHandler), (rf"{_KERNEL}/logs", LogsHandler)]
