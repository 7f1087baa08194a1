"""The REST API through a real jupyter_server (pytest-jupyter), real Apptainer, local channel.

Validation, refusals, auth and the job queue's rules without containers: tests/test_handlers.py."""

from __future__ import annotations

import asyncio
import subprocess

import pytest
from conftest import DEBUGFS, held_writable, wait_job

from kernel_provider.host.holders import ANOTHER_PROGRAM

pytestmark = pytest.mark.integration


@pytest.fixture
def jp_server_config(image_layout, request):
    """The server with our extension; a test adds config with indirect parametrization."""
    return {"ServerApp": {"jpserver_extensions": {"kernel_provider": True}}, **getattr(request, "param", {})}


def env_files(image, inner: str) -> str:
    return subprocess.run(
        [DEBUGFS, "-R", f"ls -l upper/ext3/env/{inner}", str(image)], capture_output=True, text=True
    ).stdout


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


async def test_delete_in_use_is_refused(api, image_layout):
    image = image_layout / "images" / "env.img"
    with held_writable(image, image_layout / "images" / "ubuntu24--base_image.sif", "held-by-test"):
        status, data = await api("DELETE", "overlays", "env")
        assert status == 409, data
        # Held by a container that is not one of our kernels: named as "another program", by the process
        # that holds Apptainer's lock on it (the instance's own).
        message = data["message"]
        assert message.startswith("env cannot be deleted: it is in use by another program: pid "), message
        assert "[held-by-test]" in message and message.endswith("; shut that down first"), message
        _, listing = await api("GET", "overlays")
        row = {r["name"]: r for r in listing["overlays"]}["env"]
        assert row["in_use"] and row["in_use_by"] == ANOTHER_PROGRAM
    status, _ = await api("DELETE", "overlays", "env")
    assert status == 204
    assert not image.exists()


async def test_make_kernel_for_an_overlay_adds_python_and_status_sees_the_change(api, image_layout, monkeypatch):
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(image_layout / "data"))
    _, before = await api("GET", "status")
    assert before["channel_problem"] == ""
    status, made = await api("POST", "kernelspecs", body={"overlays": ["hello/1.0"], "label": "hello"})
    assert status == 201, made
    assert made == {
        "kernelspec": "condatainer-hello",
        "display_name": "CondaTainer: hello",
        "overlays": ["python/3.11", "hello/1.0"],
        "note": "The kernel also mounts python/3.11: the stack had no Python of its own.",
    }
    _, after = await api("GET", "status")
    assert after["generation"] != before["generation"], "a new kernelspec changes the generation"
    assert (await api("POST", "kernelspecs", body={"overlays": ["hello/1.0"], "label": "hello"}))[0] == 409
    assert (await api("POST", "kernelspecs", body={"overlays": ["nosuch/1.0"]}))[0] == 404
    status, refused = await api("POST", "kernelspecs", body={"overlays": [str(image_layout / "images" / "env.img")]})
    assert status in (400, 404), "a path is never used as one"


# --- package operations with the local test channel ---------------------------------------


def package_names(listing: dict) -> set[str]:
    return {p["name"] for p in listing["packages"]}


async def test_create_install_remove_delete(channel_env, api, image_layout, jp_serverapp):
    events = []

    async def listen(logger, schema_id, data):
        events.append(data)

    jp_serverapp.event_logger.add_listener(
        schema_id="https://events.jupyter.org/jupyter_condatainer/job/v1", listener=listen
    )
    status, data = await api(
        "POST", "overlays", body={"name": "demo", "size_mb": 256, "packages": ["zlib", "demo-tool"]}
    )
    assert status == 202
    job = await wait_job(api, data["job"]["id"])
    assert job["state"] == "succeeded", job
    progress = [e["progress"] for e in events if e["id"] == job["id"]]
    assert progress == sorted(progress) and progress[-1] == 1
    assert any(0 < p < 1 for p in progress), "progress is pushed while the job runs"
    image = image_layout / "images" / "demo.img"
    assert image.exists()
    assert not list((image_layout / "images").glob(".*")), "no temporary files left"
    _, listing = await api("GET", "overlays", "demo", "packages")
    assert {"zlib", "demo-tool", "libdemo"} <= package_names(listing)

    status, data = await api("POST", "overlays", "demo", "packages", body={"specs": ["demopkg"]})
    assert status == 202
    assert (await wait_job(api, data["job"]["id"]))["state"] == "succeeded"
    assert "demopkg" in env_files(image, "lib/python3.11/site-packages")

    status, data = await api("DELETE", "overlays", "demo", "packages", body={"specs": ["demo-tool"]})
    assert (await wait_job(api, data["job"]["id"]))["state"] == "succeeded"
    _, listing = await api("GET", "overlays", "demo", "packages")
    assert "demo-tool" not in package_names(listing) and "demopkg" in package_names(listing)
    assert "demo-tool" not in env_files(image, "bin")

    assert (await api("DELETE", "overlays", "demo"))[0] == 204
    assert not image.exists()


async def test_failing_solve_leaves_the_env_unchanged(channel_env, api, image_layout):
    _, data = await api("POST", "overlays", body={"name": "solid", "size_mb": 128, "packages": ["zlib"]})
    assert (await wait_job(api, data["job"]["id"]))["state"] == "succeeded"
    image = image_layout / "images" / "solid.img"
    before = image.read_bytes()
    for spec in ("no-such-package", "demo-broken"):
        _, data = await api("POST", "overlays", "solid", "packages", body={"specs": [spec]})
        job = await wait_job(api, data["job"]["id"])
        assert job["state"] == "failed"
        assert spec.split("-")[0] in job["error"] or "libdemo" in job["error"], job["error"]
    assert image.read_bytes() == before, "a failed install must leave the image byte-for-byte as it was"


async def test_two_concurrent_installs_never_both_run(channel_env, api, image_layout):
    _, data = await api("POST", "overlays", body={"name": "busy", "size_mb": 128})
    assert (await wait_job(api, data["job"]["id"]))["state"] == "succeeded"
    first, second = await asyncio.gather(
        api("POST", "overlays", "busy", "packages", body={"specs": ["libdemo=1.0"]}),
        api("POST", "overlays", "busy", "packages", body={"specs": ["demopkg"]}),
    )
    statuses = sorted([first[0], second[0]])
    assert statuses == [202, 409], (first, second)
    accepted = first if first[0] == 202 else second
    assert (await wait_job(api, accepted[1]["job"]["id"]))["state"] == "succeeded"


async def test_cancel_a_create_halfway_leaves_nothing(channel_env, api, image_layout):
    _, data = await api("POST", "overlays", body={"name": "halfway", "size_mb": 256, "packages": ["demo-tool"]})
    job_id = data["job"]["id"]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while loop.time() < deadline:
        _, job = await api("GET", "jobs", job_id)
        if job["progress"] >= 0.15:  # the ext3 file exists; mm-create runs
            break
        await asyncio.sleep(0.05)
    status, job = await api("DELETE", "jobs", job_id)
    assert status == 200 and job["state"] == "cancelled"
    assert not (image_layout / "images" / "halfway.img").exists()
    assert not list((image_layout / "images").glob(".*")), "no temporary image left"


async def test_install_into_an_env_of_a_running_kernel(channel_env, api, image_layout, jp_serverapp):
    """The kernel's instance has the env mounted: the install runs through it, no restart."""
    from kernel_provider.kernel.kernelspecs import KernelspecStore, custom_spec

    _, data = await api("POST", "overlays", body={"name": "live", "size_mb": 128})
    assert (await wait_job(api, data["job"]["id"]))["state"] == "succeeded"
    spec = custom_spec(["python/3.11", "live"], label="live", writable=True, share=True)
    KernelspecStore().write(spec)
    kernel_id = await jp_serverapp.kernel_manager.start_kernel(kernel_name=spec.name)
    client = jp_serverapp.kernel_manager.get_kernel(kernel_id).client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=120)
        _, data = await api("POST", "overlays", "live", "packages", body={"specs": ["libdemo=2.0"]})
        job = await wait_job(api, data["job"]["id"])
        assert job["state"] == "succeeded", job
        assert any("of a running kernel" in line for line in job["log"]), job["log"]
        outputs = []
        await client.execute_interactive(
            "print(open('/ext3/env/share/libdemo/VERSION').read().strip())",
            output_hook=lambda m: outputs.append(m["content"].get("text", "")) if m["msg_type"] == "stream" else None,
            timeout=60,
        )
        assert "".join(outputs).strip() == "2.0"
    finally:
        client.stop_channels()
        await jp_serverapp.kernel_manager.shutdown_kernel(kernel_id)


# --- the job queue --------------------------------------------------------------------------


@pytest.mark.parametrize("jp_server_config", [{"CondaTainerExtension": {"job_concurrency": 1}}], indirect=True)
async def test_jobs_beyond_the_limit_wait_queued(channel_env, api, image_layout, jp_serverapp):
    states = []

    async def listen(logger, schema_id, data):
        states.append((data["target"], data["state"]))

    jp_serverapp.event_logger.add_listener(
        schema_id="https://events.jupyter.org/jupyter_condatainer/job/v1", listener=listen
    )
    jobs = {}
    for name in ("first", "second", "third"):
        status, data = await api("POST", "overlays", body={"name": name, "size_mb": 128})
        assert status == 202, data
        jobs[name] = data["job"]
    assert jobs["second"]["state"] == jobs["third"]["state"] == "queued", jobs
    assert "waiting for one of the 1 running jobs" in jobs["second"]["message"], jobs["second"]
    assert jobs["third"]["cancellable"]

    status, third = await api("DELETE", "jobs", jobs["third"]["id"])
    assert status == 200 and third["state"] == "cancelled", third
    assert third["message"] == "cancelled while queued; nothing was done"
    first = await wait_job(api, jobs["first"]["id"])
    second = await wait_job(api, jobs["second"]["id"])
    assert first["state"] == second["state"] == "succeeded", (first, second)
    assert states.index(("second", "running")) > states.index(("first", "succeeded")), states
    assert ("third", "running") not in states
    images = image_layout / "images"
    assert (images / "first.img").exists() and (images / "second.img").exists()
    assert not (images / "third.img").exists() and not list(images.glob(".*")), list(images.iterdir())


async def test_a_second_create_of_a_name_being_built_is_refused(channel_env, api, image_layout):
    status, data = await api("POST", "overlays", body={"name": "twice", "size_mb": 128})
    assert status == 202
    job_id = data["job"]["id"]
    status, refused = await api("POST", "overlays", body={"name": "twice", "size_mb": 128})
    assert status == 409, refused
    assert refused["message"].startswith("twice has a create job") and job_id in refused["message"], refused
    assert (await wait_job(api, job_id))["state"] == "succeeded"
    status, refused = await api("POST", "overlays", body={"name": "twice", "size_mb": 128})
    assert status == 409 and "already exists" in refused["message"], refused
