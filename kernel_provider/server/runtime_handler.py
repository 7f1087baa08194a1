"""``/condatainer/api/runtime``: which container runtime the kernels use, and in which mode.

The panel shows it: Apptainer or SingularityCE, the version, and whether kernels run in
instances (native) or each in a container of its own (SingularityCE's OCI mode).
"""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from kernel_provider.host.config import ApptainerNotFoundError
from kernel_provider.host.runtime_detect import detect
from kernel_provider.server.handlers import BaseHandler


class RuntimeHandler(BaseHandler):
    """``GET /condatainer/api/runtime``: the runtime, its version and binary, the default mode."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        """200 and ``{runtime, version, binary, mode, instances, oci_by_default}``; 503 without a runtime."""
        config = self.operations.config
        try:
            runtime = await detect(config.require_apptainer())
        except ApptainerNotFoundError as err:
            raise web.HTTPError(503, str(err)) from None
        self.finish(runtime.as_dict(oci=runtime.oci_mode(option=config.oci)))


ROUTES = [(r"/condatainer/api/runtime", RuntimeHandler)]
