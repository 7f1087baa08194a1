"""The edges of a SLURM kernel's session: time limit, queue, culling (issue 19).

Pure rules first (no cluster). Then one server on the session's private cluster runs the
three scenarios side by side, because the time limit takes its minute anyway: a kernel
whose job has a 1-minute limit counts down, is warned at short thresholds and ends by its
limit (reported as such, and restarted in a new job); meanwhile a kernel whose job waits
(``--begin``) reports its reason and expected start and is shut down while it waits (its
job goes at once); and a kernel left idle is culled with its job. Before those, the server
is SIGKILLed while the time-limited kernel holds ``x = 42`` (``persist_kernels``): the next
server adopts it with its job and its countdown, and it is that server that warns and
reports the time limit. What the notebook hears is read where JupyterLab reads it: the
event bus (websocket) and the REST API.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import urllib.error

import pytest
from conftest import Server, connect, free_port, sync_specs, wait_until
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from kernel_provider.kernel import notices, slurm, walltime
from kernel_provider.kernel.kernelspecs import KernelspecStore, custom_spec
from kernel_provider.server.extension import KERNEL_EVENT

# --- rules (no cluster) -------------------------------------------------------------------------


def test_squeue_times_and_the_state_argv():
    assert slurm.job_state_argv("12") == ["squeue", "-h", "-t", "all", "-j", "12", "-o", "%T|%P|%r|%N|%S|%e"]
    job = slurm.parse_job_state("PENDING|debug|BeginTime||2026-12-02T18:36:43|2026-12-02T19:36:43\n")
    assert job.reason == "BeginTime"
    assert job.start_time == time.mktime((2026, 12, 2, 18, 36, 43, 0, 0, -1))
    assert job.end_time - job.start_time == 3600
    assert slurm.parse_slurm_time("N/A") is None and slurm.parse_slurm_time("Unknown") is None
    message = slurm.queued_message("7", job)
    assert message == "queued as job 7 on partition debug (BeginTime), expected to start at 18:36:43"


def test_thresholds_fire_once_and_the_watch_wakes_for_the_next():
    assert walltime.crossed(16 * 60, [15, 5], []) == []
    assert walltime.crossed(14 * 60, [15, 5], []) == [15]
    assert walltime.crossed(4 * 60, [15, 5], [15]) == [5]
    assert walltime.crossed(4 * 60, [15, 5], []) == [15, 5], "a kernel started late is warned once for both"
    assert walltime.next_wakeup(16 * 60, [15, 5], [], poll=300) == 60
    assert walltime.next_wakeup(14 * 60, [15, 5], [15], poll=60) == 60
    assert walltime.next_wakeup(10, [15, 5], [15, 5], poll=60) == 60


def test_a_job_gone_at_its_end_time_ended_by_its_limit():
    now = 1000.0
    assert walltime.ended_by_time_limit(slurm.JobState("TIMEOUT", "p", "TimeLimit", "n"), None, now)
    assert not walltime.ended_by_time_limit(slurm.JobState("CANCELLED", "p", "None", "n"), now - 5, now)
    assert walltime.ended_by_time_limit(slurm.JobState("COMPLETING", "p", "TimeLimit", "n"), None, now)
    assert walltime.ended_by_time_limit(slurm.JobState("COMPLETING", "p", "None", "n"), now - 5, now)
    assert walltime.ended_by_time_limit(None, now - 5, now), "forgotten by SLURM after its end time"
    assert not walltime.ended_by_time_limit(None, now + 3600, now), "gone long before its end: not its limit"


def test_node_address_when_login_and_compute_nodes_differ():
    choose = slurm.choose_node_address
    assert choose("10.1.2.3", "cn1", "10.1.2.3", "login1") == "10.1.2.3", "NodeAddr resolved on the login node"
    assert choose("127.0.1.1", "cn1", "10.1.2.3", "login1") == "10.1.2.3", "a loopback of the login node is not cn1"
    assert choose("127.0.0.1", "box", "10.0.0.5", "box") == "127.0.0.1", "single-node cluster: loopback is right"
    assert choose("127.0.1.1", "cn1", "", "login1") == "127.0.1.1", "nothing better reported"


def test_instances_stop_refuses_names_that_are_not_our_jobs(tmp_path):
    from kernel_provider.host.state import StateStore

    with pytest.raises(slurm.SlurmError, match="jct-3f2a-x is not a jupyter-condatainer SLURM job of this user"):
        asyncio.run(slurm.stop_by_name(StateStore(tmp_path), "jct-3f2a-x"))


def test_notices_keep_how_a_kernel_ended_for_the_returning_notebook():
    board, heard = notices.NoticeBoard(), []
    board.listeners.append(lambda event, notice: heard.append((event, notice.kernel_id)))
    board.update("a", notices.RUNNING, job_id="1", end_time=time.time() + 90)
    assert 80 < board.get("a").to_json()["time_left"] <= 90
    board.update("a")  # a change nobody needs to hear about
    board.forget("a")
    assert board.get("a") is None, "an ordinary shutdown leaves nothing to tell"
    board.update("b", notices.CULLED, ended=notices.CULLED, message="idle")
    board.forget("b")
    assert board.get("b").ended == notices.CULLED
    assert board.get("b").to_json()["time_left"] is None
    assert heard == [(notices.RUNNING, "a"), (notices.CULLED, "b")]
    assert [notices.format_duration(s) for s in (42, 899, 3720)] == ["42 s", "14 min 59 s", "1 h 02 min"]


# --- on the cluster -------------------------------------------------------------------------------

KERNEL_MANAGER = "kernel_provider.server.kernelmanager.CondaTainerKernelManager"
SERVER_CONFIG = {
    "ServerApp": {"kernel_manager_class": KERNEL_MANAGER},
    # The server's timeout turns the culler on; SLURM kernels get their own, shorter one.
    "MappingKernelManager": {"cull_idle_timeout": 3600, "cull_interval": 1},
    "CondaTainerKernelManager": {"persist_kernels": True},
    "CondaTainerSlurmProvisioner": {
        "cull_idle_timeout": 4,
        "slurm_walltime_warnings": [0.5, 0.25],  # 30 s and 15 s before the end
        "slurm_walltime_poll": 2,
    },
}


class EventTap:
    """The server's event bus as JupyterLab hears it: our events of one schema (the kernel events
    unless told) from ``/api/events/subscribe``."""

    def __init__(self, server: Server, schema_id: str = KERNEL_EVENT):
        self.schema_id = schema_id
        self.events: list[dict] = []
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(server), self._loop)
        if not self._ready.wait(30):
            raise AssertionError("could not subscribe to the server's events")

    async def _listen(self, server: Server) -> None:
        request = HTTPRequest(
            f"ws://127.0.0.1:{server.port}/api/events/subscribe",
            headers={"Authorization": f"token {server.token}"},
        )
        self._socket = await websocket_connect(request)
        self._ready.set()
        while (message := await self._socket.read_message()) is not None:
            event = json.loads(message)
            if event.get("schema_id") == self.schema_id:
                self.events.append(event)

    def of(self, kernel_id: str, event: str) -> list[dict]:
        return [e for e in self.events if e["kernel_id"] == kernel_id and e["event"] == event]

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._socket.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def add_spec(label: str, **config) -> str:
    spec = custom_spec(["python/3.11"], label=label, slurm=True, extra_config=config)
    KernelspecStore().write(spec)
    return spec.name


def notice(server: Server, kernel_id: str) -> dict | None:
    try:
        return server.request("GET", f"/condatainer/api/kernels/{kernel_id}")
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return None
        raise


def run_cell(client, code: str) -> str:
    client.wait_for_ready(timeout=60)  # iopub subscribed too: a busy machine drops early output otherwise
    out: list[str] = []
    client.execute_interactive(
        code,
        timeout=60,
        output_hook=lambda m: out.append(m["content"].get("text", "")) if m["msg_type"] == "stream" else None,
    )
    return "".join(out)


@pytest.mark.integration
def test_time_limit_queue_and_culling_of_slurm_kernels(user_layout, slurm_cluster, monkeypatch):
    for key, value in slurm_cluster.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("XDG_DATA_HOME", str(user_layout / "xdg-data"))
    sync_specs()
    config = {**SERVER_CONFIG, "SessionManager": {"database_filepath": str(user_layout / "sessions.db")}}
    (user_layout / "config" / "jupyter_server_config.json").write_text(json.dumps(config))
    limited = add_spec("limited", slurm_args=["--time=1"], cull_idle_timeout=0)  # 0: never culled
    waiting = add_spec("waiting", slurm_args=["--begin=now+3600"])
    idle = add_spec("idle")
    server = Server(user_layout, free_port())
    pending_answer: dict = {}
    try:
        server.start()
        tap = EventTap(server)

        # 1. The time-limited kernel: countdown, job end time in %condatainer info.
        session = server.request(
            "POST",
            "/api/sessions",
            {"path": "n.ipynb", "name": "n.ipynb", "type": "notebook", "kernel": {"name": limited}},
        )
        first = session["kernel"]["id"]
        running = notice(server, first)
        job_id = running["job_id"]
        assert running["state"] == "RUNNING" and running["node"] == "localhost"
        assert 0 < running["time_left"] <= 60
        model = server.request("GET", f"/api/kernels/{first}")["condatainer"]
        assert model["job_id"] == job_id and 0 < model["time_left"] <= 60, "the time left in the kernel model too"
        client = connect(user_layout, first)
        info = run_cell(client, "x = 42\n%condatainer info")
        client.stop_channels()
        assert f"SLURM job:  {job_id} on localhost, ends " in info, info
        listed = subprocess.run(
            [sys.executable, "-m", "kernel_provider.cli.main", "instances", "list", "--json"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        row = next(r for r in json.loads(listed.stdout) if r["kind"] == "slurm")
        assert (row["job_id"], row["state"], row["node"], row["kernels"]) == (job_id, "RUNNING", "localhost", [first])
        assert row["owner_alive"] and 0 < row["time_left"] <= 60

        # 2. persist_kernels: the server is killed; the next one adopts the kernel, job and all.
        tap.close()
        server.kill()
        server.start()
        old_tap, tap = tap, EventTap(server)
        assert [k["id"] for k in server.request("GET", "/api/kernels")] == [first]
        assert [(s["id"], s["kernel"]["id"]) for s in server.request("GET", "/api/sessions")] == [
            (session["id"], first)
        ]
        client = connect(user_layout, first)
        assert run_cell(client, "print(x)").strip() == "42", "the same kernel, its variables intact"
        client.stop_channels()
        adopted = notice(server, first)
        assert adopted["job_id"] == job_id and adopted["state"] == "RUNNING" and adopted["time_left"] > 0

        # 3. A job that waits: its reason and expected start, then a shutdown cancels it at once.
        def start_waiting() -> None:
            pending_answer["refusal"] = server.refused("POST", "/api/kernels", {"name": waiting})

        starter = threading.Thread(target=start_waiting, daemon=True)
        starter.start()
        # The first look may come before the scheduler's (reason None); the reason follows.
        queued = wait_until(
            lambda: [e for e in tap.events if e["event"] == notices.QUEUED and e["reason"] == "BeginTime"],
            30,
            "a queued event with SLURM's reason",
        )[0]
        assert queued["expected_start"] > time.time() + 3000
        assert queued["message"].startswith(
            f"queued as job {queued['job_id']} on partition debug (BeginTime), expected"
        )
        assert queued["job_id"] in slurm_cluster.job_ids()
        server.request("DELETE", f"/api/kernels/{queued['kernel_id']}")
        assert queued["job_id"] not in slurm_cluster.job_ids(), "the shutdown cancels the waiting job"
        starter.join(30)
        status, answer = pending_answer["refusal"]
        assert status == 500 and "the start was cancelled while job" in answer["message"]
        assert tap.of(queued["kernel_id"], notices.START_CANCELLED)

        # 4. An idle kernel is culled with its job, and the notebook can learn why.
        culled = server.request("POST", "/api/kernels", {"name": idle})["id"]
        culled_job = notice(server, culled)["job_id"]
        wait_until(lambda: tap.of(culled, notices.CULLED), 30, "the idle kernel to be culled")
        assert culled not in {k["id"] for k in server.request("GET", "/api/kernels")}
        assert culled_job not in slurm_cluster.job_ids(), "culling cancels the job"
        told = notice(server, culled)
        assert (
            told["ended"] == "culled" and f"idle culling); its SLURM job {culled_job} was cancelled" in told["message"]
        )

        # 5. Back to the time-limited kernel: both warnings (by either server: a slow restart may
        # let the first server give the first one), then its end is its time limit.
        heard = lambda: old_tap.of(first, notices.WARNING) + tap.of(first, notices.WARNING)  # noqa: E731
        wait_until(lambda: {0.5, 0.25} <= {t for w in heard() for t in w["warnings"]}, 60, "both walltime warnings")
        assert tap.of(first, notices.WARNING), "the adopting server warns"
        assert all(w["time_left"] <= 30 and f"SLURM job {job_id} ends in" in w["message"] for w in heard())
        ended = wait_until(lambda: tap.of(first, notices.TIME_LIMIT), 120, "the time-limit event")[0]
        assert ended["job_id"] == job_id and "reached its time limit" in ended["message"]
        # jupyter_server restarts the dead kernel; the restart submits a new job.
        again = wait_until(
            lambda: [e for e in tap.of(first, notices.RUNNING) if e["job_id"] != job_id], 60, "a new job"
        )
        assert again[0]["job_id"] in slurm_cluster.job_ids()
        # The restart may still be under way (its job runs, its kernel not yet): the shutdown waits for it.
        server.request("DELETE", f"/api/kernels/{first}")
        assert slurm_cluster.job_ids() == set()
        log = "".join(p.read_text() for p in user_layout.glob("server-*.log"))
        assert f"queued as job {queued['job_id']} on partition debug (BeginTime), expected to start at" in log
        assert f"SLURM job {job_id} reached its time limit" in log
        tap.close()
    finally:
        server.stop()
