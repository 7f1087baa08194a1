"""The REST API through a real jupyter_server (pytest-jupyter), real Apptainer, local channel."""

from __future__ import annotations

import asyncio
import json
import subprocess

import pytest
from tornado.httpclient import HTTPClientError

from kernel_provider.instance import apptainer_env

pytestmark = pytest.mark.integration


@pytest.fixture
def jp_server_config(image_layout):
    return {"ServerApp": {"jpserver_extensions": {"kernel_provider": True}}}


@pytest.fixture
def api(jp_fetch, jp_serverapp):
    """Call the API; return (status, decoded JSON body)."""

    async def call(method: str, *path: str, body=None, headers=None, raise_error=False):
        kwargs = {"method": method, "raise_error": raise_error}
        if body is not None:
            kwargs["body"] = json.dumps(body)
        elif method in ("POST", "DELETE"):
            kwargs["allow_nonstandard_methods"] = True
        if headers is not None:
            kwargs["headers"] = headers
        response = await jp_fetch("condatainer", "api", *path, **kwargs)
        return response.code, json.loads(response.body or b"null")

    return call


async def wait_job(api, job_id: str, timeout: float = 180) -> dict:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        _, job = await api("GET", "jobs", job_id)
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        await asyncio.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def env_files(image, inner: str) -> str:
    return subprocess.run(["debugfs", "-R", f"ls -l upper/ext3/env/{inner}", str(image)], capture_output=True, text=True).stdout


async def test_list_overlays(api, image_layout):
    status, data = await api("GET", "overlays")
    assert status == 200
    rows = {row["name"]: row for row in data["overlays"]}
    assert rows["python/3.11"]["kind"] == "sqf"
    assert rows["hello/1.0"]["whatis"] == "hello 1.0 - a tiny test tool"
    assert rows["hello/1.0"]["notes"] == {"HELLO_HOME": "root of the hello tool"}
    assert rows["env"]["kind"] == "img" and rows["env"]["writable"] and not rows["env"]["in_use"]
    assert rows["ubuntu24/base_image"]["kind"] == "sif"
    assert rows["python/3.11"]["kernelspec"] == "condatainer-python-3.11"
    assert str(image_layout / "images") in data["image_dirs"]


async def test_unauthenticated_requests_are_refused(jp_fetch):
    for method, body in [("GET", None), ("POST", "{}")]:
        with pytest.raises(HTTPClientError) as err:
            await jp_fetch("condatainer", "api", "overlays", method=method, body=body, headers={"Authorization": ""})
        assert err.value.code in (401, 403)


async def test_post_without_xsrf_is_refused(jp_fetch, jp_serverapp, http_server_client, jp_base_url):
    """Cookie-authenticated (browser) requests must carry the XSRF token."""
    login = await http_server_client.fetch(
        f"{jp_base_url}?token={jp_serverapp.identity_provider.token}", follow_redirects=False, raise_error=False
    )
    cookies = "; ".join(c.split(";", 1)[0] for c in login.headers.get_list("Set-Cookie"))
    response = await http_server_client.fetch(
        f"{jp_base_url}condatainer/api/overlays", method="POST", body=json.dumps({"name": "x"}),
        headers={"Cookie": cookies}, raise_error=False,
    )
    assert response.code == 403
    assert b"XSRF" in response.body or b"xsrf" in response.body


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
    ],
    ids=["dotdot", "shell", "empty", "huge", "tiny", "not-int", "spec-shell", "spec-subst", "not-list", "channel"],
)
async def test_create_validation(api, body):
    status, data = await api("POST", "overlays", body=body)
    assert status == 400, data
    assert data["message"]


async def test_unknown_overlay_is_404_and_bad_name_400(api):
    assert (await api("GET", "overlays", "nope", "packages"))[0] == 404
    assert (await api("DELETE", "overlays", "nope"))[0] == 404
    assert (await api("GET", "overlays", "a;b", "packages"))[0] == 400
    assert (await api("GET", "jobs", "abc123"))[0] == 404


async def test_install_validation(api):
    status, data = await api("POST", "overlays", "env", "packages", body={"specs": ["bad spec;"]})
    assert status == 400
    status, data = await api("POST", "overlays", "python/3.11", "packages", body={"specs": ["zlib"]})
    assert status == 400 and "read-only" in data["message"]


async def test_delete_in_use_is_refused(api, image_layout):
    image = image_layout / "images" / "env.img"
    instance = "held-by-test"
    subprocess.run(
        ["apptainer", "instance", "start", "--overlay", f"{image}:rw",
         str(image_layout / "images" / "ubuntu24--base_image.sif"), instance],
        check=True, capture_output=True, env=apptainer_env(),
    )
    try:
        status, data = await api("DELETE", "overlays", "env")
        assert status == 409, data
        _, listing = await api("GET", "overlays")
        assert {r["name"]: r for r in listing["overlays"]}["env"]["in_use"]
    finally:
        subprocess.run(["apptainer", "instance", "stop", instance], capture_output=True, env=apptainer_env())
    status, _ = await api("DELETE", "overlays", "env")
    assert status == 204
    assert not image.exists()
