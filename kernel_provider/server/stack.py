"""The stack a notebook ran on, in the REST API: a running kernel's stack record, and what differs
from a recorded one now (:mod:`kernel_provider.envs.stackrecord`). A notebook keeps the record
in its metadata: the kernel's own in ``language_info.condatainer`` (every client saves it), the
JupyterLab plugin's in ``condatainer``; the plugin asks for the differences when it opens one,
and for the remedies it can offer with one click.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict

from jupyter_server.auth.decorator import authorized
from tornado import web

from kernel_provider.envs import remedies, stackrecord
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


def recorded_stack(body: dict) -> dict:
    """The record a request is about: ``stack`` (the record itself) or ``metadata`` (a notebook's
    metadata, where the record is in ``language_info`` or the plugin's key:
    :func:`~kernel_provider.envs.stackrecord.from_metadata`); 400 when there is none."""
    found = body.get("stack") if "stack" in body else stackrecord.from_metadata(body.get("metadata"))
    if found is None:
        raise web.HTTPError(400, "no stack record: send {'stack': record} or {'metadata': the notebook's metadata}")
    with http_errors():
        return stackrecord.check(found)


class StackCompareHandler(BaseHandler):
    """``/condatainer/api/stack/compare``: a recorded stack against the images now."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        """The differences (``{"stack": record}`` or ``{"metadata": notebook metadata}``): 200 and
        ``differences`` (empty: the same); 400 for a body without a stack record."""
        recorded = recorded_stack(self.body())
        with http_errors():
            differences = await asyncio.to_thread(stackrecord.compare, self.operations, recorded)
        self.finish({"differences": differences})


class StackRemediesHandler(BaseHandler):
    """``/condatainer/api/stack/remedies``: what gets a recorded stack back (:mod:`kernel_provider.envs.remedies`)."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        """The remedies (``{"stack": record}`` or ``{"metadata": notebook metadata}``, and ``kernel``: the
        notebook's kernelspec, never offered): 200 and ``remedies``, each applied through the routes
        it names (a kernel change, ``…/freeze``, ``…/rollback``); 400 for a body without a stack record."""
        body = self.body()
        recorded = recorded_stack(body)
        kernel = body.get("kernel", "")
        if not isinstance(kernel, str):
            raise web.HTTPError(400, "kernel must be the notebook's kernelspec name (a string)")
        with http_errors():
            found = await asyncio.to_thread(remedies.remedies, self.operations, recorded, kernel)
        self.finish({"remedies": [asdict(r) for r in found]})


ROUTES = [
    (r"/condatainer/api/kernels/(?P<kernel_id>[0-9a-f-]+)/stack", KernelStackHandler),
    (r"/condatainer/api/stack/compare", StackCompareHandler),
    (r"/condatainer/api/stack/remedies", StackRemediesHandler),
]
