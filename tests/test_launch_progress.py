"""Launch progress through a real jupyter_server: a kernel's start, step by step, on the event bus,
in the server log and in the REST API; a failing start names the step it failed in."""

from __future__ import annotations

import asyncio
import json
import logging
import threading

import pytest
from conftest import KERNEL, Server, free_port, wait_until
from slurm_cluster import CPUS
from test_slurm import add_slurm_spec, slurm_env  # noqa: F401 - slurm_env is a fixture
from test_slurm_sessions import EventTap
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
        assert any("starting or joining the shared instance, mounting" in line for line in logged), logged

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
def test_a_slurm_start_reports_its_place_in_the_queue_and_keeps_its_logs(user_layout, slurm_cluster):
    """A SLURM kernel's start behind a job that holds the node and one that waits before it:
    submitted, queued with its place as it changes, its instance on the job's node once the
    holder goes, then as locally. Its log (the step's output, the job's) is served while it runs;
    a start that fails on the node (a bind the node does not have) keeps a log that says why."""
    name = add_slurm_spec("progress", slurm_args=["--partition=debug"])
    broken = add_slurm_spec("nobind", binds=["/no/such/dir"])

    def hold(label: str) -> str:
        argv = ["sbatch", "--parsable", f"--job-name=jct-test-{label}", "--output=/dev/null", f"--cpus-per-task={CPUS}"]
        return slurm_cluster.run([*argv, "--wrap=sleep 300"]).stdout.strip()

    def messages(kernel_id: str, step: str) -> list[str]:
        return [e["message"] for e in tap.events if e["kernel_id"] == kernel_id and e["step"] == step]

    holder = hold("holder")
    wait_until(lambda: (holder, "jct-test-holder", "RUNNING") in slurm_cluster.jobs(), 30, "the holder to run")
    ahead = hold("ahead")
    server = Server(user_layout, free_port())
    started: dict = {}
    try:
        server.start()
        tap = EventTap(server, LAUNCH_EVENT)
        starter = threading.Thread(
            target=lambda: started.update(server.request("POST", "/api/kernels", {"name": name})), daemon=True
        )
        starter.start()
        second = wait_until(
            lambda: [e for e in tap.events if "(position 2), waiting for " in e["message"]],
            30,
            "the kernel's job queued second",
        )[0]
        kernel_id = second["kernel_id"]
        slurm_cluster.run(["scancel", ahead])
        wait_until(lambda: [m for m in messages(kernel_id, "queue") if "(position 1)" in m], 30, "first in line")
        slurm_cluster.run(["scancel", holder])
        starter.join(120)
        assert started["id"] == kernel_id
        events = wait_until(
            lambda: (
                (got := [e for e in tap.events if e["kernel_id"] == kernel_id])
                and got[-1]["state"] != "running"
                and got
            ),
            60,
            "the SLURM kernel's start to end",
        )
        recorded = server.request("GET", f"/condatainer/api/kernels/{kernel_id}/launch")["events"]
        assert [e["message"] for e in recorded] == [e["message"] for e in events]
        logs = wait_until(
            lambda: (
                (got := server.request("GET", f"/condatainer/api/kernels/{kernel_id}/logs")["logs"])
                and "--existing" in got[0]["text"]
                and got
            ),
            30,
            "ipykernel's start message in the kernel's log",
        )
        server.request("DELETE", f"/api/kernels/{kernel_id}")

        status, refusal = server.refused("POST", "/api/kernels", {"name": broken})
        failed = wait_until(lambda: [e for e in tap.events if e["state"] == "failed"], 30, "the failure")[0]
        failed_logs = server.request("GET", f"/condatainer/api/kernels/{failed['kernel_id']}/logs")["logs"]
        tap.close()
    finally:
        server.stop()
        slurm_cluster.run(["scancel", holder, ahead], check=False)
    steps = [e["step"] for e in events]
    print("SLURM launch:", [(e["step"], e["message"], e["elapsed"]) for e in events])
    assert steps[0] == "stack" and steps[-4:] == ["python", "kernel", "wait", "ready"], events
    assert events[1]["message"] == "submitting the kernel's SLURM job"
    queued = messages(kernel_id, "queue")[1:]
    job_id = queued[0].split()[4]
    assert queued[0].startswith(f"queued as SLURM job {job_id} on debug"), queued
    assert len(queued) == len(set(queued)) and any("(position 1)" in m for m in queued), queued
    on_node = messages(kernel_id, "instance")
    assert len(on_node) == 1 and "(job " in on_node[0] and "mounting ubuntu24/base_image + python/3.11" in on_node[0]
    names = [log["name"] for log in logs]
    assert names[:2] == ["kernel output", f"SLURM job {job_id} output"] and "instance stderr (apptainer)" in names

    assert status == 500 and "could not start the container" in refusal["message"], refusal
    assert failed["kernel_name"] == broken and failed["step"] in ("queue", "instance"), failed
    job_output = next(log for log in failed_logs if log["name"].endswith(" output"))
    assert "/no/such/dir" in job_output["text"], failed_logs
