"""Disk space in the REST API: how full each env is, the image directories' free space, growing an env.

``GET /condatainer/api/disk`` and ``POST /condatainer/api/overlays/NAME/resize`` (a job, like
every env change); the work is :mod:`kernel_provider.envs.disk`.
"""

from __future__ import annotations

import asyncio

from jupyter_server.auth.decorator import authorized
from tornado import web

from kernel_provider.envs import disk
from kernel_provider.server.handlers import _NAME, BaseHandler, http_errors


class DiskHandler(BaseHandler):
    """``/condatainer/api/disk``: envs' use and the image directories' free space."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        """Every env's size, allocation and use, every image directory's free space: 200 (bytes throughout)."""
        self.finish(await asyncio.to_thread(disk.usage, self.operations))


class ResizeHandler(BaseHandler):
    """``/condatainer/api/overlays/NAME/resize``: grow an env."""

    @web.authenticated
    @authorized
    async def post(self, name: str) -> None:
        """Grow the env to ``size_mb`` MiB: 202 and the job; 400 for a size that is not bigger or too big,
        409 while a container has the env mounted or a job works on it, 507 when the disk has no room."""
        name = await self.overlay_name(name)
        size_mb = self.body().get("size_mb")
        self.not_busy(name)
        with http_errors():
            await asyncio.to_thread(disk.check_grow, self.operations, name, size_mb)
        operations = self.operations
        job = self.jobs.submit("resize", name, lambda report: disk.grow(operations, report, name, size_mb))
        self.accepted(job)


ROUTES = [
    (r"/condatainer/api/disk", DiskHandler),
    (rf"/condatainer/api/overlays/{_NAME}/resize", ResizeHandler),
]
