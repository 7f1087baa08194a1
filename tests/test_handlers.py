"""The REST layer through a real jupyter_server, without Apptainer: validation, refusals as HTTP
statuses, jobs (queue, cancel, failure), authentication, authorization and XSRF.

The env operations are real up to the container: the catalog of placeholder images, the name,
size and free-space checks, the listing. What would start a container (create, package changes,
delete, reading an env's packages) is scripted by :class:`ScriptedOperations`, so every path of
``kernel_provider/server/handlers.py`` runs in milliseconds. ``tests/test_server_api.py`` drives
the same API with real containers.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from conftest import wait_job
from jupyter_server.auth.authorizer import Authorizer

from kernel_provider.envs.envmeta import EnvUnreadableError
from kernel_provider.envs.jobs import JobError
from kernel_provider.envs.operations import DiskSpaceError, EnvOperations, Package
from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.incontainer.envlock import EnvBusyError
from kernel_provider.incontainer.history import HistoryError
from kernel_provider.model.names import InvalidNameError
from kernel_provider.model.overlays import OverlayError, OverlayNotFoundError
from kernel_provider.server.handlers import HTTP_STATUS

JOB_EVENT = "https://events.jupyter.org/jupyter_condatainer/job/v1"


class ScriptedOperations(EnvOperations):
    """Real lookups and checks; a script where a container would run.

    Every job's work is recorded in ``calls``, reports a step, passes its point of no return when
    ``irreversible``, waits while the gate is closed (:meth:`hold`/:meth:`release`), then raises
    ``failure`` if one is set, else ends with a message. ``delete`` (done in its request) records
    and raises ``failure`` the same way.
    """

    def __init__(self, config: CondaTainerConfig):
        super().__init__(config)
        self.calls: list[tuple] = []
        self.failure: Exception | None = None
        self.irreversible = False
        self._gate = asyncio.Event()
        self._gate.set()

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    async def _work(self, report, *call) -> str:
        self.calls.append(call)
        report.step(0.5, f"{call[0]} of {call[1]} running")
        if self.irreversible:
            report.point_of_no_return()
        await self._gate.wait()
        if self.failure:
            raise self.failure
        return f"{call[0]} of {call[1]} done"

    async def create(self, report, name, size_mb=1024, packages=(), channels=(), register_kernel=False) -> str:
        return await self._work(report, "create", name, size_mb, list(packages), list(channels), register_kernel)

    async def change(self, report, name, verb, specs, channels=()) -> str:
        return await self._work(report, verb, name, list(specs), list(channels))

    async def delete(self, name: str) -> None:
        self.calls.append(("delete", name))
        if self.failure:
            raise self.failure

    def packages(self, name: str) -> list[Package]:
        self.find_env(name)
        return [Package("zlib", "1.3.1", "h4ab18f5_1", "conda-forge")]


class ReadOnlyAuthorizer(Authorizer):
    """Lets a user read but not change: what a deployment's authorizer may decide."""

    def is_authorized(self, handler, user, action, resource) -> bool:
        return action == "read"


@pytest.fixture
def jp_server_config(placeholder_layout, request):
    """Our extension on the placeholder images, without the orphan sweep at start (it asks
    Apptainer); a test adds config with indirect parametrization."""
    config = {
        "ServerApp": {"jpserver_extensions": {"kernel_provider": True}},
        "CondaTainerExtension": {"sweep_orphans": False},
    }
    for section, values in getattr(request, "param", {}).items():
        config.setdefault(section, {}).update(values)
    return config


@pytest.fixture
def operations(jp_serverapp) -> ScriptedOperations:
    """The scripted operations, in place of the server's own."""
    scripted = ScriptedOperations(CondaTainerConfig())
    jp_serverapp.web_app.settings["condatainer_operations"] = scripted
    return scripted


async def jobs(api) -> list[dict]:
    return (await api("GET", "jobs"))[1]["jobs"]


# --- refusals and their HTTP status ---------------------------------------------------------

# One refusal of every kind the handlers map, with the status it must get.
REFUSALS = [
    (OverlayNotFoundError("gone", ["/images"], ["env"]), 404),
    (EnvUnreadableError("env is open read-write in another container"), 409),
    (EnvBusyError("env is in use by another container"), 409),
    (FileExistsError("an image named env already exists"), 409),
    (JobError("job 1 is past the point where it can be stopped safely"), 409),
    (DiskSpaceError("not enough free space for a 64 MB env"), 507),
    (InvalidNameError("'a;b' is not an overlay name"), 400),
    (HistoryError("env has no revision 9"), 400),
    (OverlayError("base images are managed by CondaTainer"), 400),
    (ValueError("size_mb must be between 64 and 65536"), 400),
]


def test_every_kind_of_refusal_is_tested():
    assert {type(error) for error, _ in REFUSALS} == {kind for kind, _ in HTTP_STATUS}


@pytest.mark.parametrize(("error", "status"), REFUSALS, ids=[type(error).__name__ for error, _ in REFUSALS])
async def test_a_refusal_becomes_its_status_with_its_message(api, operations, error, status):
    operations.failure = error
    code, data = await api("DELETE", "overlays", "env")
    assert code == status, data
    assert data["message"] == str(error)


async def test_an_unexpected_error_is_a_500_not_a_refusal(api, operations):
    operations.failure = RuntimeError("a bug")
    code, _ = await api("DELETE", "overlays", "env")
    assert code == 500


async def test_delete_answers_204(api, operations):
    assert (await api("DELETE", "overlays", "env"))[0] == 204
    assert operations.calls == [("delete", "env")]


# --- validation before anything runs --------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"name": "../x"},
        {"name": "a;rm -rf"},
        {"name": ""},
        {"name": "ok", "size_mb": 10**9},
        {"name": "ok", "size_mb": 1},
        {"name": "ok", "size_mb": "big"},
        {"name": "ok", "packages": ["numpy; rm -rf /"]},
        {"name": "ok", "packages": ["$(id)"]},
        {"name": "ok", "packages": "zlib"},
        {"name": "ok", "channels": ["../../etc"]},
        {"name": None},
        {"name": 123},
        {"name": ["ok"]},
        {"name": "bar.sqf"},
        {"name": "python/3.12.img"},
        {"name": "ok", "packages": ["zlib --force"]},
        {"name": "ok", "packages": ["--override-channels"]},
        {"name": "ok", "channels": ["-c"]},
        {"name": "ok", "channels": ["--override-channels"]},
        {"name": "ok", "channels": ["http://example.org/channel"]},
    ],
    ids=[
        "dotdot",
        "shell",
        "empty",
        "huge",
        "tiny",
        "not-int",
        "spec-shell",
        "spec-subst",
        "not-list",
        "channel",
        "null",
        "number",
        "list",
        "sqf-suffix",
        "img-suffix",
        "spec-option",
        "spec-override",
        "channel-c",
        "channel-override",
        "channel-http",
    ],
)
async def test_a_bad_create_is_400_and_starts_nothing(api, operations, body):
    status, data = await api("POST", "overlays", body=body)
    assert status == 400, data
    assert data["message"]
    assert operations.calls == [] and await jobs(api) == []


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("env", "already exists"),
        ("ENV", "differs only in case"),
        ("python", "already answers to the bare name 'python'"),
        ("hello/2.0", "already answers to the bare name 'hello'"),
        ("python-3.11", "same kernel name"),
    ],
)
async def test_create_refuses_names_that_collide_or_shadow(api, operations, name, words):
    status, data = await api("POST", "overlays", body={"name": name})
    assert status == 409, data
    assert words in data["message"], data
    assert await jobs(api) == [], "no job was started"


async def test_a_create_without_room_for_the_env_is_507(api, operations):
    operations.config.min_free_mb = 2**40  # more than any disk has
    status, data = await api("POST", "overlays", body={"name": "big", "size_mb": 128})
    assert status == 507, data
    assert data["message"].startswith("not enough free space for a 128 MB env"), data
    assert await jobs(api) == []


async def test_deeply_nested_or_huge_bodies_are_refused(jp_fetch, operations):
    async def post(raw: str):
        response = await jp_fetch("condatainer", "api", "overlays", method="POST", body=raw, raise_error=False)
        return response.code, json.loads(response.body or b"{}").get("message", "")

    status, message = await post('{"name": ' + "[" * 5000 + "]" * 5000 + "}")
    assert status == 400 and "nested too deeply" in message, message
    status, message = await post(json.dumps({"name": "ok", "packages": ["zlib"] * 200_000}))
    assert status == 413 and "over the 1024 KiB limit" in message, message
    assert (await post("not json"))[0] == 400
    assert (await post("[1, 2]"))[0] == 400


async def test_lookups_are_exact_spaces_are_not_trimmed(api, operations):
    status, data = await api("DELETE", "overlays", "env ")
    assert status == 400 and "remove the spaces" in data["message"], data
    assert (await api("GET", "overlays", " env", "packages"))[0] == 400
    assert operations.calls == []


async def test_unknown_overlays_and_jobs_are_404_and_bad_names_400(api, operations):
    assert (await api("GET", "overlays", "nope", "packages"))[0] == 404
    assert (await api("DELETE", "overlays", "nope"))[0] == 404
    assert (await api("GET", "overlays", "a;b", "packages"))[0] == 400
    assert (await api("GET", "jobs", "abc123"))[0] == 404
    assert (await api("DELETE", "jobs", "abc123"))[0] == 404


async def test_package_changes_are_validated(api, operations):
    status, data = await api("POST", "overlays", "env", "packages", body={"specs": ["bad spec;"]})
    assert status == 400, data
    status, data = await api("POST", "overlays", "env", "packages", body={"specs": "zlib"})
    assert status == 400 and data["message"] == "specs must be a list of strings", data
    status, data = await api("POST", "overlays", "python/3.11", "packages", body={"specs": ["zlib"]})
    assert status == 400 and "read-only" in data["message"], data
    assert operations.calls == []


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        ("rollback", {"revision": "2"}, "revision must be an integer"),
        ("rollback", {"revision": True}, "revision must be an integer"),
        ("freeze", {"name": "frozen", "version": 1}, "name and version must be strings"),
        (
            "freeze",
            {"name": "frozen", "version": "1.0", "revision": "latest"},
            "revision must be an integer or left out",
        ),
    ],
)
async def test_rollback_and_freeze_bodies_are_validated(api, operations, path, body, words):
    status, data = await api("POST", "overlays", "env", path, body=body)
    assert status == 400 and words in data["message"], data
    assert await jobs(api) == []


async def test_history_of_a_read_only_image_is_refused(api, operations):
    status, data = await api("GET", "overlays", "python/3.11", "history")
    assert status == 400 and "read-only" in data["message"], data


# --- what is listed and read --------------------------------------------------------------


async def test_the_listing_is_the_catalog(api, operations, placeholder_layout):
    status, data = await api("GET", "overlays")
    assert status == 200
    rows = {row["name"]: row for row in data["overlays"]}
    assert {"python/3.11", "hello/1.0", "env", "ubuntu24/base_image"} <= rows.keys()
    assert rows["env"]["kind"] == "img" and rows["env"]["writable"] and not rows["env"]["in_use"]
    assert rows["python/3.11"]["kernelspec"] == "condatainer-python-3.11"  # written by the server at start
    assert str(placeholder_layout / "images") in data["image_dirs"]


async def test_packages_of_an_env(api, operations):
    status, data = await api("GET", "overlays", "env", "packages")
    assert status == 200
    assert data["packages"] == [{"name": "zlib", "version": "1.3.1", "build": "h4ab18f5_1", "channel": "conda-forge"}]


# --- jobs --------------------------------------------------------------------------------------


async def test_a_create_is_a_job_with_what_was_asked(api, operations, jp_serverapp):
    events = []

    async def listen(logger, schema_id, data):
        events.append(data)

    jp_serverapp.event_logger.add_listener(schema_id=JOB_EVENT, listener=listen)
    body = {"name": "demo", "size_mb": 128, "packages": ["zlib"], "channels": ["conda-forge"], "register_kernel": True}
    status, data = await api("POST", "overlays", body=body)
    assert status == 202, data
    assert data["job"]["kind"] == "create" and data["job"]["target"] == "demo"
    job = await wait_job(api, data["job"]["id"], timeout=10)
    assert job["state"] == "succeeded" and job["message"] == "create of demo done", job
    assert operations.calls == [("create", "demo", 128, ["zlib"], ["conda-forge"], True)]
    progress = [event["progress"] for event in events if event["id"] == job["id"]]
    assert 0.5 in progress and progress[-1] == 1, "progress is pushed on the event bus"


@pytest.mark.parametrize(("method", "verb"), [("POST", "install"), ("PATCH", "update"), ("DELETE", "remove")])
async def test_package_changes_are_jobs_of_their_verb(api, operations, method, verb):
    body = {"specs": ["libdemo"], "channels": ["conda-forge"]}
    status, data = await api(method, "overlays", "env", "packages", body=body)
    assert status == 202, data
    assert (await wait_job(api, data["job"]["id"], timeout=10))["state"] == "succeeded"
    assert operations.calls == [(verb, "env", ["libdemo"], ["conda-forge"])]


async def test_one_job_per_image_at_a_time(api, operations):
    operations.hold()
    _, data = await api("POST", "overlays", "env", "packages", body={"specs": ["zlib"]})
    running = data["job"]["id"]
    for method, path, body in [
        ("POST", ("overlays", "env", "packages"), {"specs": ["libdemo"]}),
        ("DELETE", ("overlays", "env"), None),
        ("POST", ("overlays", "env", "rollback"), {"revision": 0}),
    ]:
        status, refused = await api(method, *path, body=body)
        assert status == 409, (path, refused)
        assert refused["message"].startswith(f"env has a install job running (job {running})"), refused
    operations.release()
    assert (await wait_job(api, running, timeout=10))["state"] == "succeeded"
    assert operations.calls == [("install", "env", ["zlib"], [])]


async def test_a_second_create_of_a_name_being_built_is_refused(api, operations):
    operations.hold()
    _, data = await api("POST", "overlays", body={"name": "twice", "size_mb": 128})
    status, refused = await api("POST", "overlays", body={"name": "twice", "size_mb": 128})
    assert status == 409 and refused["message"].startswith("twice has a create job"), refused
    operations.release()
    assert (await wait_job(api, data["job"]["id"], timeout=10))["state"] == "succeeded"


@pytest.mark.parametrize("jp_server_config", [{"CondaTainerExtension": {"job_concurrency": 1}}], indirect=True)
async def test_jobs_beyond_the_limit_wait_queued_and_can_be_cancelled_there(api, operations):
    operations.hold()
    submitted = {}
    for name in ("first", "second", "third"):
        status, data = await api("POST", "overlays", body={"name": name, "size_mb": 128})
        assert status == 202, data
        submitted[name] = data["job"]
    assert submitted["first"]["state"] != "queued"
    assert submitted["second"]["state"] == submitted["third"]["state"] == "queued", submitted
    assert "waiting for one of the 1 running jobs" in submitted["second"]["message"]

    status, third = await api("DELETE", "jobs", submitted["third"]["id"])
    assert status == 200 and third["state"] == "cancelled", third
    assert third["message"] == "cancelled while queued; nothing was done"
    operations.release()
    for name in ("first", "second"):
        assert (await wait_job(api, submitted[name]["id"], timeout=10))["state"] == "succeeded"
    assert [call[1] for call in operations.calls] == ["first", "second"], "the cancelled job never ran"


async def test_a_running_job_is_cancelled_until_its_point_of_no_return(api, operations):
    operations.hold()
    _, data = await api("POST", "overlays", body={"name": "halfway", "size_mb": 128})
    status, job = await api("DELETE", "jobs", data["job"]["id"])
    assert status == 200 and job["state"] == "cancelled" and job["message"] == "cancelled; nothing was created", job

    operations.irreversible = True
    _, data = await api("POST", "overlays", "env", "packages", body={"specs": ["zlib"]})
    assert not (await api("GET", "jobs", data["job"]["id"]))[1]["cancellable"]
    status, refused = await api("DELETE", "jobs", data["job"]["id"])
    assert status == 409 and "past the point where it can be stopped safely" in refused["message"], refused
    operations.release()
    assert (await wait_job(api, data["job"]["id"], timeout=10))["state"] == "succeeded"


async def test_a_failed_job_keeps_the_error_and_says_its_first_line(api, operations):
    operations.failure = JobError("mm-install failed: nothing provides nosuchpkg\n(the solver's whole output)")
    _, data = await api("POST", "overlays", "env", "packages", body={"specs": ["nosuchpkg"]})
    job = await wait_job(api, data["job"]["id"], timeout=10)
    assert job["state"] == "failed", job
    assert job["message"] == "mm-install failed: nothing provides nosuchpkg"
    assert job["error"] == str(operations.failure)
    assert [j["state"] for j in await jobs(api)] == ["failed"]


# --- who may ask ------------------------------------------------------------------------------


async def test_unauthenticated_requests_are_refused(jp_fetch, operations):
    for method, body in [("GET", None), ("POST", "{}")]:
        response = await jp_fetch(
            "condatainer", "api", "overlays", method=method, body=body, headers={"Authorization": ""}, raise_error=False
        )
        assert response.code in (401, 403), response.code
    assert operations.calls == []


@pytest.mark.parametrize("jp_server_config", [{"ServerApp": {"authorizer_class": ReadOnlyAuthorizer}}], indirect=True)
async def test_what_the_authorizer_forbids_is_403(api, operations):
    assert (await api("GET", "overlays"))[0] == 200
    assert (await api("POST", "overlays", body={"name": "demo"}))[0] == 403
    assert (await api("DELETE", "overlays", "env"))[0] == 403
    assert operations.calls == [] and await jobs(api) == []


async def test_post_without_xsrf_is_refused(jp_serverapp, http_server_client, jp_base_url, operations):
    """Cookie-authenticated (browser) requests must carry the XSRF token."""
    login = await http_server_client.fetch(
        f"{jp_base_url}?token={jp_serverapp.identity_provider.token}", follow_redirects=False, raise_error=False
    )
    cookies = "; ".join(c.split(";", 1)[0] for c in login.headers.get_list("Set-Cookie"))
    response = await http_server_client.fetch(
        f"{jp_base_url}condatainer/api/overlays",
        method="POST",
        body=json.dumps({"name": "x"}),
        headers={"Cookie": cookies},
        raise_error=False,
    )
    assert response.code == 403
    assert b"XSRF" in response.body or b"xsrf" in response.body
    assert operations.calls == []
