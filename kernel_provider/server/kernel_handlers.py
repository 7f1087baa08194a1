"""REST API under ``/condatainer/api/kernels``: what the notebook should know about its kernels.

Each kernel's :class:`~kernel_provider.kernel.notices.KernelNotice`: a SLURM kernel's job,
its place in the queue, its time left; how a kernel ended (time limit, culled for
idleness). The panel polls it for the countdown; the same changes go out on the event bus.
"""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web

from kernel_provider.kernel import notices
from kernel_provider.server.handlers import AUTH_RESOURCE


class KernelNoticesHandler(ExtensionHandlerMixin, APIHandler):
    """``GET``: every kernel's notice (running SLURM jobs, and kernels that ended and why)."""

    auth_resource = AUTH_RESOURCE

    @web.authenticated
    @authorized
    async def get(self) -> None:
        """The notices, newest first."""
        items = sorted(notices.board.notices.values(), key=lambda n: n.updated, reverse=True)
        self.finish({"kernels": [notice.to_json() for notice in items]})


class KernelNoticeHandler(ExtensionHandlerMixin, APIHandler):
    """``GET``: one kernel's notice; 404 when there is nothing to tell about it."""

    auth_resource = AUTH_RESOURCE

    @web.authenticated
    @authorized
    async def get(self, kernel_id: str) -> None:
        """The kernel's notice."""
        notice = notices.board.get(kernel_id)
        if notice is None:
            raise web.HTTPError(404, f"nothing to tell about kernel {kernel_id}: not a SLURM kernel, or not ended")
        self.finish(notice.to_json())


KERNEL_ROUTES = [
    (r"/condatainer/api/kernels", KernelNoticesHandler),
    (r"/condatainer/api/kernels/(?P<kernel_id>[0-9a-fA-F-]+)", KernelNoticeHandler),
]
