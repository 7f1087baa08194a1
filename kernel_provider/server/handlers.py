"""REST API under ``/condatainer/api/``: overlays, their packages, and jobs.

Every handler is authenticated and authorized (resource ``condatainer``); XSRF applies
to every non-GET request (``APIHandler``). Bodies are validated before anything runs,
names are looked up in the image catalog (never used as paths), and long work becomes
a job (202 + the job) so no request waits on a container.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web

from kernel_provider.envs.envmeta import EnvUnreadableError
from kernel_provider.envs.jobs import JobError, JobRegistry, job_running_message
from kernel_provider.envs.operations import DiskSpaceError, EnvOperations, as_json
from kernel_provider.incontainer.envlock import EnvBusyError
from kernel_provider.incontainer.history import HistoryError
from kernel_provider.model.names import InvalidNameError
from kernel_provider.model.overlays import OverlayError, OverlayNotFoundError
from kernel_provider.model.validation import (
    validate_channels,
    validate_env_name,
    validate_lookup_name,
    validate_specs,
)

AUTH_RESOURCE = "condatainer"
# What each refusal means in HTTP, most specific first: the one place errors become statuses.
HTTP_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (OverlayNotFoundError, 404),
    (EnvUnreadableError, 409),
    (EnvBusyError, 409),
    (FileExistsError, 409),
    (JobError, 409),
    (DiskSpaceError, 507),
    (InvalidNameError, 400),
    (HistoryError, 400),
    (OverlayError, 400),
    (ValueError, 400),
)


@contextmanager
def http_errors() -> Iterator[None]:
    """Turn our refusals into HTTP errors whose message is the refusal's (first line first)."""
    try:
        yield
    except tuple(kind for kind, _ in HTTP_STATUS) as err:
        status = next(code for kind, code in HTTP_STATUS if isinstance(err, kind))
        raise web.HTTPError(status, str(err)) from None


MAX_BODY_BYTES = 1024 * 1024  # names, specs and channels: far below this


class BaseHandler(ExtensionHandlerMixin, APIHandler):
    auth_resource = AUTH_RESOURCE

    @property
    def operations(self) -> EnvOperations:
        return self.settings["condatainer_operations"]

    @property
    def jobs(self) -> JobRegistry:
        return self.settings["condatainer_jobs"]

    def body(self) -> dict:
        raw = self.request.body or b"{}"
        if len(raw) > MAX_BODY_BYTES:
            raise web.HTTPError(
                413,
                f"request body is {len(raw)} bytes, over the {MAX_BODY_BYTES // 1024} KiB limit; send a smaller one",
            )
        try:
            data = json.loads(raw)
        except RecursionError:
            raise web.HTTPError(400, "request body is nested too deeply; send a flat JSON object") from None
        except ValueError:
            raise web.HTTPError(400, "request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise web.HTTPError(400, "request body must be a JSON object")
        return data

    def list_field(self, data: dict, key: str) -> list[str]:
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise web.HTTPError(400, f"{key} must be a list of strings")
        return value

    async def overlay_name(self, name: str) -> str:
        """The catalog name of ``name``: bad names 400, unknown ones 404 (the scan runs off the loop)."""
        with http_errors():
            return (await asyncio.to_thread(self.operations.find, validate_lookup_name(name))).name

    def not_busy(self, name: str) -> None:
        """409 while a job (running or queued) works on ``name``: one operation per image at a time."""
        job = self.jobs.running_for(name)
        if job:
            raise web.HTTPError(409, job_running_message(name, job))

    async def read(self, reader, *args):
        """Run a blocking reader of an env in a thread: bad input is 400, an env that cannot be
        read reliably now (another container has it open read-write) 409."""
        with http_errors():
            return await asyncio.to_thread(reader, *args)

    def accepted(self, job) -> None:
        self.set_status(202)
        self.finish({"job": job.to_json()})


class OverlaysHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        rows = await asyncio.to_thread(self.operations.list)
        self.finish({"image_dirs": list(self.operations.config.image_dirs), "overlays": as_json(rows)})

    @web.authenticated
    @authorized
    async def post(self) -> None:
        data = self.body()
        name, size = data.get("name", ""), data.get("size_mb", 1024)
        with http_errors():
            validate_env_name(name)
            packages = self.list_field(data, "packages")
            if packages:
                validate_specs(packages)
            channels = validate_channels(self.list_field(data, "channels"))
            self.not_busy(name)  # being created (or queued to be)
            await asyncio.to_thread(self.operations.check_create, name, size)
        register = bool(data.get("register_kernel", False))
        job = self.jobs.submit(
            "create", name, lambda report: self.operations.create(report, name, size, packages, channels, register)
        )
        self.accepted(job)


class OverlayHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def delete(self, name: str) -> None:
        name = await self.overlay_name(name)
        self.not_busy(name)
        with http_errors():
            await self.operations.delete(name)
        self.set_status(204)
        self.finish()


class PackagesHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        name = await self.overlay_name(name)
        packages = await self.read(self.operations.packages, name)
        self.finish({"packages": as_json(packages)})

    @web.authenticated
    @authorized
    async def post(self, name: str) -> None:
        await self._change(name, "install")

    @web.authenticated
    @authorized
    async def patch(self, name: str) -> None:
        """Update the named packages (``mm-update``) within what the env's specs allow."""
        await self._change(name, "update")

    @web.authenticated
    @authorized
    async def delete(self, name: str) -> None:
        await self._change(name, "remove")

    async def _change(self, name: str, verb: str) -> None:
        name = await self.overlay_name(name)
        data = self.body()
        with http_errors():
            specs = validate_specs(self.list_field(data, "specs"))
            channels = validate_channels(self.list_field(data, "channels"))
            await asyncio.to_thread(self.operations.find_env, name)
        self.not_busy(name)
        job = self.jobs.submit(verb, name, lambda report: self.operations.change(report, name, verb, specs, channels))
        self.accepted(job)


class JobsHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.finish({"jobs": [job.to_json(log=False) for job in self.jobs.jobs.values()]})


class JobHandler(BaseHandler):
    def job(self, job_id: str):
        if job_id not in self.jobs.jobs:
            raise web.HTTPError(404, f"no job {job_id}")
        return self.jobs.jobs[job_id]

    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        self.finish(self.job(job_id).to_json())

    @web.authenticated
    @authorized
    async def delete(self, job_id: str) -> None:
        self.job(job_id)
        with http_errors():
            job = await self.jobs.cancel(job_id)
        self.finish(job.to_json())


# -- env lifecycle: history, export, rollback, freeze (kernel_provider.envs.lifecycle / .freeze) ----


class _LifecycleHandler(BaseHandler):
    def lifecycle(self):
        from kernel_provider.envs.lifecycle import Lifecycle

        return Lifecycle(self.operations)

    async def env_name(self, name: str) -> str:
        """The catalog name of an ``.img`` env: 404 unknown, 400 for a read-only image."""
        name = await self.overlay_name(name)
        with http_errors():
            await asyncio.to_thread(self.operations.find_env, name)
        return name


class HistoryHandler(_LifecycleHandler):
    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        name = await self.env_name(name)
        revisions = await self.read(self.lifecycle().history, name)
        self.finish({"name": name, "revisions": [r.to_json() for r in revisions]})


class ExportHandler(_LifecycleHandler):
    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        name = await self.env_name(name)
        fmt = self.get_query_argument("format", "yml")
        revision = self.get_query_argument("revision", None)
        filename, text = await self.read(self.lifecycle().export, name, fmt, revision)
        if self.get_query_argument("download", ""):
            self.set_header("Content-Disposition", f'attachment; filename="{filename}"')
        self.set_header("X-Filename", filename)
        self.finish(text, set_content_type="text/plain; charset=utf-8")


class RollbackHandler(_LifecycleHandler):
    @web.authenticated
    @authorized
    async def post(self, name: str) -> None:
        name = await self.env_name(name)
        revision = self.body().get("revision")
        if isinstance(revision, bool) or not isinstance(revision, int):
            raise web.HTTPError(400, "revision must be an integer (see GET …/history)")
        self.not_busy(name)
        lifecycle = self.lifecycle()
        busy = await asyncio.to_thread(lifecycle.busy_reason, name)
        if busy:
            raise web.HTTPError(409, busy)
        await self.read(lifecycle.check_revision, name, revision)
        job = self.jobs.submit("rollback", name, lambda report: lifecycle.rollback(report, name, revision))
        self.accepted(job)


class FreezeHandler(_LifecycleHandler):
    @web.authenticated
    @authorized
    async def post(self, name: str) -> None:
        from kernel_provider.envs import freeze

        name = await self.env_name(name)
        data = self.body()
        revision = data.get("revision")
        if revision is not None and (isinstance(revision, bool) or not isinstance(revision, int)):
            raise web.HTTPError(400, "revision must be an integer or left out (the latest)")
        frozen, version = data.get("name"), data.get("version")
        if not isinstance(frozen, str) or not isinstance(version, str):
            raise web.HTTPError(400, 'name and version must be strings, e.g. {"name": "myenv", "version": "1.0"}')
        with http_errors():
            await asyncio.to_thread(freeze.check_target, self.operations, name, frozen, version)
        self.not_busy(name)
        await self.read(self.lifecycle().check_revision, name, revision)
        register = bool(data.get("register_kernel", True))
        operations = self.operations
        job = self.jobs.submit(
            "freeze",
            name,
            lambda report: freeze.freeze(operations, report, name, frozen, version, revision, register),
        )
        self.accepted(job)


_NAME = r"(?P<name>.+?)"  # "python/3.11" raw or %2F-encoded; validated by names.normalize
ROUTES = [
    (r"/condatainer/api/overlays", OverlaysHandler),
    (rf"/condatainer/api/overlays/{_NAME}/packages", PackagesHandler),
    (rf"/condatainer/api/overlays/{_NAME}/history", HistoryHandler),
    (rf"/condatainer/api/overlays/{_NAME}/export", ExportHandler),
    (rf"/condatainer/api/overlays/{_NAME}/rollback", RollbackHandler),
    (rf"/condatainer/api/overlays/{_NAME}/freeze", FreezeHandler),
    (rf"/condatainer/api/overlays/{_NAME}", OverlayHandler),
    (r"/condatainer/api/jobs", JobsHandler),
    (r"/condatainer/api/jobs/(?P<job_id>[0-9a-f]+)", JobHandler),
]
