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
from dataclasses import asdict

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web

from kernel_provider.envs.envmeta import EnvUnreadableError
from kernel_provider.envs.jobs import JobError, JobRegistry, job_running_message
from kernel_provider.envs.operations import DiskSpaceError, EnvOperations, as_json
from kernel_provider.envs.preview import preview
from kernel_provider.incontainer.envlock import EnvBusyError
from kernel_provider.incontainer.history import HistoryError
from kernel_provider.kernel.kernelspecs import broken_kernels
from kernel_provider.kernel.stackcheck import make_kernel
from kernel_provider.model.names import InvalidNameError
from kernel_provider.model.overlays import OverlayError, OverlayNotFoundError
from kernel_provider.model.validation import (
    validate_channels,
    validate_env_name,
    validate_lookup_name,
    validate_specs,
)
from kernel_provider.server import status

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
    """What every REST handler shares: the ``condatainer`` auth resource, the operations, the jobs, body checks."""

    auth_resource = AUTH_RESOURCE

    @property
    def operations(self) -> EnvOperations:
        """The server's env operations (made once by the extension, shared by every request)."""
        return self.settings["condatainer_operations"]

    @property
    def jobs(self) -> JobRegistry:
        """The server's jobs: where long work goes, so no request waits on a container."""
        return self.settings["condatainer_jobs"]

    def body(self) -> dict:
        """The request's JSON object (none: ``{}``); 413 over 1 MiB, 400 when it is not a JSON object."""
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
        """``data[key]`` as a list of strings (missing: empty); 400 when it is anything else."""
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

    async def not_mounted(self, name: str) -> None:
        """409 while a container that is not ours to run the change in has the env mounted, with who:
        refused before a job starts (:meth:`EnvOperations.busy_reason`)."""
        busy = await asyncio.to_thread(self.operations.busy_reason, name)
        if busy:
            raise web.HTTPError(409, busy)

    async def read(self, reader, *args):
        """Run a blocking reader of an env in a thread: bad input is 400, an env that cannot be
        read reliably now (another container has it open read-write) 409."""
        with http_errors():
            return await asyncio.to_thread(reader, *args)

    def accepted(self, job) -> None:
        """Answer 202 and the job: the work goes on after the request."""
        self.set_status(202)
        self.finish({"job": job.to_json()})


class OverlaysHandler(BaseHandler):
    """``/condatainer/api/overlays``: the images, and new envs."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        """List every image with its notes, size and state: 200, the image directories, the images, and
        the kernels whose stack cannot start now (``broken_kernels``: kernelspec, display name, reason)."""
        rows = await asyncio.to_thread(self.operations.list)
        broken = await asyncio.to_thread(broken_kernels)
        self.finish(
            {"image_dirs": list(self.operations.config.image_dirs), "overlays": as_json(rows), "broken_kernels": broken}
        )

    @web.authenticated
    @authorized
    async def post(self) -> None:
        """Create an env (name, size_mb, packages, channels, register_kernel): 202 and the job; 400 for bad input,
        409 when the name is taken or being created, 507 when it would not fit on the disk."""
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
    """``/condatainer/api/overlays/NAME``: one image."""

    @web.authenticated
    @authorized
    async def delete(self, name: str) -> None:
        """Delete an image and its sidecar: 204; 400 for a base image, 409 while a job or a container uses it."""
        name = await self.overlay_name(name)
        self.not_busy(name)
        with http_errors():
            await self.operations.delete(name)
        self.set_status(204)
        self.finish()


class PackagesHandler(BaseHandler):
    """``/condatainer/api/overlays/NAME/packages``: an env's packages, and changes to them (as jobs)."""

    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        """List the env's installed packages: 200 and the packages, 409 while another container may be changing it."""
        name = await self.overlay_name(name)
        packages = await self.read(self.operations.packages, name)
        self.finish({"packages": as_json(packages)})

    @web.authenticated
    @authorized
    async def post(self, name: str) -> None:
        """Install packages into the env (specs, channels): 202 and the job, 409 while another job runs
        on it or another container has it mounted."""
        await self._change(name, "install")

    @web.authenticated
    @authorized
    async def patch(self, name: str) -> None:
        """Update the named packages (``mm-update``) within what the env's specs allow."""
        await self._change(name, "update")

    @web.authenticated
    @authorized
    async def delete(self, name: str) -> None:
        """Remove packages from the env (specs): 202 and the job, 409 while another job runs on it or
        another container has it mounted."""
        await self._change(name, "remove")

    async def _change(self, name: str, verb: str) -> None:
        """The change as a job; with ``"dry_run": true`` in the body, 200 and the solver's plan instead
        (:mod:`kernel_provider.envs.preview`: nothing changes, the env stays free for others)."""
        name = await self.overlay_name(name)
        data = self.body()
        with http_errors():
            specs = validate_specs(self.list_field(data, "specs"))
            channels = validate_channels(self.list_field(data, "channels"))
            await asyncio.to_thread(self.operations.find_env, name)
            if data.get("dry_run") is True:
                self.finish({"plan": await preview(self.operations, name, verb, specs, channels)})
                return
        await self.not_mounted(name)
        self.not_busy(name)  # then at once the job: no other request comes in between
        job = self.jobs.submit(verb, name, lambda report: self.operations.change(report, name, verb, specs, channels))
        self.accepted(job)


class StatusHandler(BaseHandler):
    """``/condatainer/api/status``: what the panel polls every few seconds."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        """200, the generation of images, kernelspecs and instances (it changes with each of them)
        and the channel problem ("" when none is known): a few stat calls, no container."""
        config = self.operations.config
        generation = await asyncio.to_thread(status.generation, config)
        problem = await asyncio.to_thread(status.channel_problem, config, list(self.jobs.jobs.values()))
        self.finish({"generation": generation, "channel_problem": problem})


class KernelspecsHandler(BaseHandler):
    """``/condatainer/api/kernelspecs``: kernels for an env or a custom stack ("Make kernel…")."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        """Make a kernel for a stack (overlays, label): 201 and the kernelspec, its Launcher name and
        its stack; 400 for a stack that cannot start (no Python, a file that is no image), 404 for
        an unknown overlay, 409 for a name that is taken."""
        data = self.body()
        requested = self.list_field(data, "overlays")
        label = data.get("label", "")
        if not isinstance(label, str) or len(label) > 100 or any(c in label for c in "\n\r\t"):
            raise web.HTTPError(400, "label must be one line of at most 100 characters")
        overlays = [await self.overlay_name(name) for name in requested]  # catalog names, never paths
        with http_errors():
            made = await asyncio.to_thread(
                make_kernel, self.operations.config, self.operations.catalog(), overlays, label.strip()
            )
        self.set_status(201)
        self.finish(asdict(made))


class JobsHandler(BaseHandler):
    """``/condatainer/api/jobs``: this server's jobs."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        """List this server's jobs, oldest first, each with the tail of its log: 200 and the jobs."""
        self.finish({"jobs": [job.to_json(log=False) for job in self.jobs.jobs.values()]})


class JobHandler(BaseHandler):
    """``/condatainer/api/jobs/ID``: one job."""

    def job(self, job_id: str):
        """The job, or 404 (unknown, or finished so long ago that it was forgotten)."""
        if job_id not in self.jobs.jobs:
            raise web.HTTPError(404, f"no job {job_id}")
        return self.jobs.jobs[job_id]

    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        """The job with its whole log: 200 and the job, 404 when there is none."""
        self.finish(self.job(job_id).to_json())

    @web.authenticated
    @authorized
    async def delete(self, job_id: str) -> None:
        """Cancel the job and wait for it to end: 200 and the job, 409 once it is past its point of no return."""
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
    """``/condatainer/api/overlays/NAME/history``: an env's revisions."""

    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        """The env's revisions with their package changes: 200 and the revisions, 409 while it cannot be read."""
        name = await self.env_name(name)
        revisions = await self.read(self.lifecycle().history, name)
        self.finish({"name": name, "revisions": [r.to_json() for r in revisions]})


class ExportHandler(_LifecycleHandler):
    """``/condatainer/api/overlays/NAME/export``: a revision as a file to recreate the env from."""

    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        """A revision as ``environment.yml`` or an ``@EXPLICIT`` lock (``?format=yml|lock&revision=N&download=1``):
        200 and the text, 400 for an unknown format or revision or one that cannot be locked."""
        name = await self.env_name(name)
        fmt = self.get_query_argument("format", "yml")
        revision = self.get_query_argument("revision", None)
        filename, text = await self.read(self.lifecycle().export, name, fmt, revision)
        if self.get_query_argument("download", ""):
            self.set_header("Content-Disposition", f'attachment; filename="{filename}"')
        self.set_header("X-Filename", filename)
        self.finish(text, set_content_type="text/plain; charset=utf-8")


class RollbackHandler(_LifecycleHandler):
    """``/condatainer/api/overlays/NAME/rollback``: make an env hold an earlier revision's packages."""

    @web.authenticated
    @authorized
    async def post(self, name: str) -> None:
        """Roll the env back to a revision (revision): 202 and the job; 400 for a revision that does not exist or
        cannot be locked, 409 while a job runs on the env or another container has it mounted."""
        name = await self.env_name(name)
        revision = self.body().get("revision")
        if isinstance(revision, bool) or not isinstance(revision, int):
            raise web.HTTPError(400, "revision must be an integer (see GET …/history)")
        self.not_busy(name)
        await self.not_mounted(name)
        lifecycle = self.lifecycle()
        await self.read(lifecycle.check_revision, name, revision)
        job = self.jobs.submit("rollback", name, lambda report: lifecycle.rollback(report, name, revision))
        self.accepted(job)


class FreezeHandler(_LifecycleHandler):
    """``/condatainer/api/overlays/NAME/freeze``: an env revision as a read-only ``.sqf`` overlay."""

    @web.authenticated
    @authorized
    async def post(self, name: str) -> None:
        """Freeze the env into ``name--version.sqf`` (name, version, revision, register_kernel): 202 and the job;
        400 for bad input or an unknown revision, 409 when the name is taken or a job runs on the env."""
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
    (r"/condatainer/api/status", StatusHandler),
    (r"/condatainer/api/kernelspecs", KernelspecsHandler),
    (r"/condatainer/api/jobs", JobsHandler),
    (r"/condatainer/api/jobs/(?P<job_id>[0-9a-f]+)", JobHandler),
]
