"""The stack a notebook ran on, in the REST API: a running kernel's stack record, and what differs
from a recorded one now (:mod:`kernel_provider.envs.stackrecord`). The client keeps the record
in the notebook's metadata (``condatainer``) and asks for the differences when it opens it.
"""

from __future__ import annotations

import asyncio

from jupyter_server.auth.decorator import authorized
from tornado import web

from kernel_provider.envs import stackrecord
from kernel_provider.kernel.provisioner_base import CondaTainerProvisionerBase
from kernel_provider.server.handlers import BaseHandler, http_errors


class KernelStackHandler(BaseHandler):
    """``/condatainer/api/kernels/ID/stack``: a running kernel's stack record."""

    @web.authenticated
    @authorized
    async def get(self, kernel_id: str) -> None:
        """The record (base image, overlays with identities, env revision): 200; 404 for no such
        kernel, 400 when it is not a running CondaTainer kernel."""
        try:
            provisioner = self.kernel_manager.get_kernel(kernel_id).provisioner
        except KeyError:
            raise web.HTTPError(404, f"no kernel {kernel_id}") from None
        if not isinstance(provisioner, CondaTainerProvisionerBase) or provisioner.instance is None:
            raise web.HTTPError(400, "not a running CondaTainer kernel: it has no stack to record")
        plan = provisioner.instance.plan
        with http_errors():
            self.finish(await asyncio.to_thread(stackrecord.record, self.operations, plan))


class StackCompareHandler(BaseHandler):
    """``/condatainer/api/stack/compare``: a recorded stack against the images now."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        """The differences (``{"stack": record}``): 200 and ``differences`` (empty: the same); 400 for
        a body that is not a stack record."""
        recorded = self.body().get("stack")
        with http_errors():
            differences = await asyncio.to_thread(stackrecord.compare, self.operations, recorded)
        self.finish({"differences": differences})


ROUTES = [
    (r"/condatainer/api/kernels/(?P<kernel_id>[0-9a-f-]+)/stack", KernelStackHandler),
    (r"/condatainer/api/stack/compare", StackCompareHandler),
]
