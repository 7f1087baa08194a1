"""Launch progress through a real jupyter_server: a kernel's start, step by step, on the event bus,
in the server log and in the REST API; a failing start names the step it failed in."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from conftest import KERNEL, Server, free_port, wait_until
from test_slurm import add_slurm_spec, slurm_env  # noqa: F401 - slurm_env is a fixture
from tornado.httpclient import HTTPClientError

from kernel_provider.kernel.kernelspecs import KernelspecStore, custom_spec
from kernel_provider.kernel.progress import LAUNCH_EVENT

pytestmark = pytest.mark.integration


@pytest.fixture
def jp_server_config(kernel_env):
    return {"ServerApp": {"jpserver_extensions": {"kernel_provider": True}}}


@pytest.fixture
def launch_events(jp_serverapp):
    """Every launch event the server's event bus carries, in order."""
    events: list[dict] = []

    async def listen(logger, schema_id, data):
        events.append(dict(data))

    jp_serverapp.event_logger.add_listener(schema_id=LAUNCH_EVENT, listener=listen)
    return events


async def start_kernel(jp_fetch, name: str):
    return await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": name}), raise_error=False)


async def test_progress_events_in_order_and_a_failure_names_its_step(
    jp_fetch, api, jp_serverapp, launch_events, kernel_env, caplog
):
    caplog.set_level(logging.INFO)
    response = await start_kernel(jp_fetch, KERNEL)
    assert response.code == 201, response.body
    kernel_id = json.loads(response.body)["id"]
    try:
        await asyncio.to_thread(
            wait_until, lambda: any(e["state"] != "running" for e in launch_events), 120, "the kernel's ready event"
        )
        ours = [e for e in launch_events if e["kernel_id"] == kernel_id]
        assert [e["step"] for e in ours] == ["stack", "instance", "python", "kernel", "wait", "ready"], ours
        assert ours[-1]["state"] == "ready" and all(e["state"] == "running" for e in ours[:-1])
        assert "mounting ubuntu24/base_image + python/3.11" in ours[1]["message"]
        elapsed = [e["elapsed"] for e in ours]
        assert elapsed == sorted(elapsed) and all(e["kernel_name"] == KERNEL for e in ours)
        print("launch steps:", [(e["step"], e["elapsed"]) for e in ours])

        status, recorded = await api("GET", "kernels", kernel_id, "launch")
        assert status == 200 and recorded["events"] == ours
        logged = [r.getMessage() for r in caplog.records if kernel_id in r.getMessage()]
        assert any("starting instance, mounting" in line for line in logged), logged

        status, logs = await api("GET", "kernels", kernel_id, "logs")
        names = [log["name"] for log in logs["logs"]]
        assert status == 200 and names[0] == "kernel output" and "instance stderr (apptainer)" in names, names
        assert "--existing" in logs["logs"][0]["text"], logs  # ipykernel's own start message
    finally:
        await jp_fetch("api", "kernels", kernel_id, method="DELETE")
    status, _ = await api("GET", "kernels", kernel_id, "logs")
    assert status == 404, "a kernel shut down cleanly keeps no log"

    # A kernel whose Python cannot even start: the start fails while waiting, its output is kept.
    KernelspecStore().write(
        custom_spec(["python/3.11"], label="nohome", extra_config={"env": {"PYTHONHOME": "/nonexistent"}})
    )
    response = await start_kernel(jp_fetch, "condatainer-nohome")
    assert response.code == 201, response.body
    broken = json.loads(response.body)["id"]
    try:
        await asyncio.to_thread(
            wait_until,
            lambda: any(e["kernel_id"] == broken and e["state"] == "failed" for e in launch_events),
            60,
            "the broken kernel's failure",
        )
    finally:
        await jp_fetch("api", "kernels", broken, method="DELETE", raise_error=False)
    failed = next(e for e in launch_events if e["kernel_id"] == broken and e["state"] == "failed")
    assert failed["step"] == "wait" and failed["message"].startswith("failed while waiting for the kernel"), failed
    status, logs = await api("GET", "kernels", broken, "logs")
    assert status == 200 and "Fatal Python error" in logs["logs"][0]["text"], logs

    # A corrupt overlay: the start fails in the instance step, and says so.
    (kernel_env / "images" / "corrupt--1.0.sqf").write_bytes(b"this is not squashfs" * 100)
    KernelspecStore().write(custom_spec(["python/3.11", "corrupt/1.0"], label="corrupt"))
    launch_events.clear()
    response = await start_kernel(jp_fetch, "condatainer-corrupt")
    assert response.code == 500
    await asyncio.to_thread(wait_until, lambda: launch_events, 10, "the failure event")
    failed = launch_events[-1]
    assert failed["state"] == "failed" and failed["step"] == "instance", launch_events
    assert failed["message"].startswith("failed while starting the instance: "), failed
    assert "corrupt--1.0.sqf is damaged or not an image" in failed["error"]
    assert [e["step"] for e in launch_events] == ["stack", "instance", "instance"]


async def test_unknown_kernel_has_no_launch_record(api):
    with pytest.raises(HTTPClientError) as err:
        await api("GET", "kernels", "0123abcd", "launch", raise_error=True)
    assert err.value.code == 404


@pytest.mark.usefixtures("slurm_env")
def test_a_slurm_start_reports_its_job(user_layout, slurm_cluster):
    """A SLURM kernel's start: submitted, (queued,) its instance on the job's node, then as locally."""
    name = add_slurm_spec("progress", slurm_args=["--partition=debug"])
    server = Server(user_layout, free_port())
    try:
        server.start()
        kernel_id = server.request("POST", "/api/kernels", {"name": name})["id"]
        events = wait_until(
            lambda: (
                (got := server.request("GET", f"/condatainer/api/kernels/{kernel_id}/launch")["events"])
                and got[-1]["state"] != "running"
                and got
            ),
            120,
            "the SLURM kernel's start to end",
        )
    finally:
        server.stop()
    steps = [e["step"] for e in events]
    print("SLURM launch:", [(e["step"], e["message"], e["elapsed"]) for e in events])
    assert steps[0] == "stack" and steps[-4:] == ["python", "kernel", "wait", "ready"], events
    assert events[1]["message"] == "submitting the kernel's SLURM job"
    queued = [e["message"] for e in events if e["step"] == "queue"][1:]
    assert all(m.startswith("queued as SLURM job ") and " on debug" in m for m in queued), queued
    on_node = [e["message"] for e in events if e["step"] == "instance"]
    assert len(on_node) == 1 and "(job " in on_node[0] and "mounting ubuntu24/base_image + python/3.11" in on_node[0]
