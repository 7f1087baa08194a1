"""SLURM kernels: argv builders, and the whole lifecycle on a real cluster + Apptainer.

Only the tests on the cluster carry the ``integration`` marker; the others need neither
SLURM nor Apptainer. The cluster is the session's private single-node one
(``tests/slurm_cluster.py``), so every job in its queue is one these tests made; a test
still only ever cancels its own. Kernels talk to the server over tcp on 127.0.0.1 (the
node is this host). Execution goes straight to the kernel with the connection file the
server wrote; interrupt, restart and shutdown go through the server's REST API like
JupyterLab's.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import pytest
from conftest import (
    KERNEL,
    Server,
    free_port,
    printed,
    processes_mentioning,
    reply_to,
    running_instances,
    server_kernel,
    sync_specs,
    terminal_of,
    wait_until,
)
from conftest import run_cell as execute
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.manager import AsyncKernelManager

from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.host.state import InstanceRecord, Owner
from kernel_provider.kernel import slurm
from kernel_provider.kernel.kernelspecs import KernelspecStore, StackSpec, custom_spec
from kernel_provider.model.overlays import scan

REPORT = (
    "import os, sys; print(os.environ.get('SLURM_JOB_ID'), os.environ.get('SLURM_STEP_ID'), "
    "os.environ['IN_CONDATAINER'], sys.executable, os.environ.get('http_proxy'), os.environ.get('all_proxy'))"
)


# --- argv builders and decisions (no cluster) ---------------------------------------------


def test_sbatch_argv_names_the_job_and_keeps_user_options_last():
    argv = slurm.sbatch_argv("jcts-abc", "/r/jcts-abc.sbatch", "/r/jcts-abc.out", ["--partition=gpu", "--gpus=1"])
    assert argv == [
        "sbatch",
        "--parsable",
        "--job-name=jcts-abc",
        "--output=/r/jcts-abc.out",
        "--nodes=1",
        "--ntasks=1",
        "--partition=gpu",
        "--gpus=1",
        "/r/jcts-abc.sbatch",
    ]


@pytest.mark.parametrize("bad", ["--job-name=x", "-J", "--output=/tmp/o", "--wrap=true", "partition=debug"])
def test_sbatch_args_that_would_hide_our_job_are_refused(bad):
    with pytest.raises(slurm.SlurmError):
        slurm.check_sbatch_args(["--time=1:00:00", bad])


def test_step_squeue_and_scancel_argv():
    assert slurm.step_argv("12", "cn1", "jcts-abc-kernel", ["apptainer", "exec", "instance://jcts-abc", "true"]) == [
        "srun",
        "--jobid=12",
        "--overlap",
        "--nodes=1",
        "--ntasks=1",
        "--nodelist=cn1",
        "--job-name=jcts-abc-kernel",
        "/bin/sh",
        "-c",
        slurm.forward_script(),
        "jct-step",
        "apptainer",
        "exec",
        "instance://jcts-abc",
        "true",
    ]
    terminal = slurm.step_argv("12", "cn1", "jcts-abc-terminal", ["apptainer", "exec"], pty=True)
    assert terminal[:4] == ["srun", "--jobid=12", "--overlap", "--pty"], terminal
    singularity_step = slurm.step_argv("12", "cn1", "s", ["singularity", "exec"], "SINGULARITYENV_")
    assert 'export "SINGULARITYENV_$name=' in singularity_step[9]
    assert slurm.my_jobs_argv() == ["squeue", "--me", "-h", "-o", "%i|%j|%T|%N|%e"]
    assert slurm.steps_argv("12") == ["squeue", "-h", "-s", "-j", "12", "-o", "%i|%j"]
    assert slurm.scancel_argv("12") == ["scancel", "12"]
    assert slurm.scancel_argv("12.3", "KILL") == ["scancel", "--signal=KILL", "12.3"]
    assert slurm.scancel_argv("12", "TERM", batch=True) == ["scancel", "--batch", "--signal=TERM", "12"]


def test_job_script_starts_reports_and_stops_the_instance():
    script = slurm.job_script(
        ["apptainer", "instance", "start", "--bind", "/a b", "base.sif", "jcts-x"],
        ["apptainer", "instance", "stop", "jcts-x"],
        "/run/jcts-x.status",
    )
    assert script.startswith("#!/bin/bash\n")
    assert "if ! apptainer instance start --bind '/a b' base.sif jcts-x; then" in script
    stop = 'stop_instance() { kill "$holder" 2>/dev/null; apptainer instance stop jcts-x >/dev/null 2>&1; exit 0; }'
    assert stop in script, "the sleep that holds the job ends with it"
    assert "trap stop_instance TERM INT HUP" in script
    assert 'report state=ready "host=$(hostname)" "proxy=$(find_proxy)" "addr=$(hostname -I' in script
    assert slurm.parse_status("state=ready\nhost=cn1\nproxy=10.0.0.1:3128\n") == {
        "state": "ready",
        "host": "cn1",
        "proxy": "10.0.0.1:3128",
    }


def test_proxy_env_is_condatainers():
    assert slurm.proxy_env("") == []
    assert dict(slurm.proxy_env("login1:8080")) == {
        "http_proxy": "http://login1:8080",
        "https_proxy": "http://login1:8080",
        "HTTP_PROXY": "http://login1:8080",
        "HTTPS_PROXY": "http://login1:8080",
        "all_proxy": "socks5://login1:8080",
        "ALL_PROXY": "socks5://login1:8080",
        "no_proxy": "localhost,127.0.0.1",
        "NO_PROXY": "localhost,127.0.0.1",
    }


def test_client_env_drops_an_outer_jobs_variables():
    env = slurm.slurm_env(
        {"SLURM_JOB_ID": "5", "SLURM_CPUS_PER_TASK": "4", "SLURM_CONF": "/c", "SBATCH_ACCOUNT": "a", "HOME": "/h"}
    )
    assert env == {"SLURM_CONF": "/c", "SBATCH_ACCOUNT": "a", "HOME": "/h"}
    # A terminal's srun gets the server's whole environment: the outer job's variables are unset in its argv.
    outer = {"SLURM_JOB_ID": "5", "SLURM_CONF": "/c", "HOME": "/h", "SLURM_NTASKS": "2"}
    assert slurm.without_outer_job(["srun", "x"], outer) == [
        "env",
        "-u",
        "SLURM_JOB_ID",
        "-u",
        "SLURM_NTASKS",
        "srun",
        "x",
    ]
    assert slurm.without_outer_job(["srun", "x"], {"SLURM_CONF": "/c"}) == ["srun", "x"]


def test_parsers():
    assert slurm.parse_job_state("PENDING|debug|Resources||N/A|N/A\n") == slurm.JobState(
        "PENDING", "debug", "Resources", "", "N/A", "N/A"
    )
    assert slurm.parse_job_state("") is None
    assert slurm.parse_jobs("7|jcts-a|RUNNING|cn1|2026-12-02T18:00:00\n8|other|PENDING||N/A\n") == [
        slurm.QueuedJob("7", "jcts-a", "RUNNING", "cn1", "2026-12-02T18:00:00"),
        slurm.QueuedJob("8", "other", "PENDING", "", "N/A"),
    ]


def _record(name: str, owner: Owner) -> InstanceRecord:
    return InstanceRecord(name, "b.sif", [], [], [], {}, owner, "key", slurm_job="1")


def test_orphans_are_ours_by_name_with_a_dead_or_missing_owner():
    alive = Owner.current()
    dead = Owner(alive.pid, alive.start_time + 1, alive.host)  # same PID, other start: a recycled PID
    elsewhere = Owner(1, 1, "another-login-node")
    jobs = [
        slurm.QueuedJob(str(i), name, "RUNNING")
        for i, name in enumerate(["jcts-live", "jcts-dead", "jcts-nofile", "jcts-remote", "unrelated", "jct-local"])
    ]
    records = {
        r.name: r for r in [_record("jcts-live", alive), _record("jcts-dead", dead), _record("jcts-remote", elsewhere)]
    }
    assert [job.name for job in slurm.orphan_jobs(jobs, records)] == ["jcts-dead", "jcts-nofile"]


def test_record_keeps_the_job_id(tmp_path):
    from kernel_provider.host.state import StateStore

    store = StateStore(tmp_path)
    store.write(_record("jcts-a", Owner.current()))
    assert store.read("jcts-a").slurm_job == "1"
    assert json.loads(store.path("jcts-a").read_text())["jupyter_condatainer"]["slurm_job"] == "1"


def test_slurm_kernelspec_is_named_and_shown_as_such():
    spec = custom_spec(["python/3.11"], label="py", slurm=True, extra_config={"slurm_args": ["--partition=debug"]})
    assert (spec.name, spec.display_name) == ("condatainer-py-slurm", "CondaTainer: py (SLURM)")
    provisioner = spec.to_kernel_json()["metadata"]["kernel_provisioner"]
    assert provisioner == {
        "provisioner_name": "condatainer-slurm-provisioner",
        "config": {"overlays": ["python/3.11"], "slurm_args": ["--partition=debug"]},
    }
    assert StackSpec.from_kernel_json(spec.to_kernel_json()) == spec


def test_kernelspec_with_the_old_launcher_option_is_rewritten_once_for_the_slurm_provisioner(tmp_path, caplog):
    env, base = tmp_path / "py.img", tmp_path / "base.sif"
    env.touch()
    base.touch()
    spec = custom_spec(
        [str(env)], label="py", base_image=str(base), slurm=True, extra_config={"slurm_args": ["-p", "a"]}
    )
    old = spec.to_kernel_json()
    old["metadata"]["kernel_provisioner"] = {
        "provisioner_name": "condatainer-provisioner",
        "config": {"overlays": [str(env)], "launcher": "slurm", "slurm_args": ["-p", "a"], "base_image": str(base)},
    }
    store = KernelspecStore(tmp_path / "kernels")
    (store.kernels_dir / spec.name).mkdir(parents=True)
    (store.kernels_dir / spec.name / "kernel.json").write_text(json.dumps(old))
    assert store.read_all() == {spec.name: spec}

    catalog = scan([], "")
    first, second = store.sync(catalog, wanted=[]), store.sync(catalog, wanted=[])
    assert (first.written, second.written, second.unchanged) == ([spec.name], [], [spec.name])
    assert json.loads((store.kernels_dir / spec.name / "kernel.json").read_text()) == spec.to_kernel_json()
    assert "provisioner option 'launcher' is deprecated; rewritten for condatainer-slurm-provisioner" in caplog.text


# --- on the cluster -------------------------------------------------------------------------


@pytest.fixture
def slurm_env(user_layout, slurm_cluster, monkeypatch):
    for key, value in slurm_cluster.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("XDG_DATA_HOME", str(user_layout / "xdg-data"))
    sync_specs()
    return user_layout


def add_slurm_spec(label: str, **config) -> str:
    spec = custom_spec(["python/3.11"], label=label, slurm=True, extra_config=config)
    KernelspecStore().write(spec)
    return spec.name


def job_of(cluster, kernel_id: str) -> tuple[str, str, str] | None:
    """(job id, name, state) of the kernel's job; it is named after the kernel id."""
    jobs = [job for job in cluster.jobs() if job[1].startswith(f"{slurm.JOB_PREFIX}{kernel_id[:8]}")]
    return jobs[0] if jobs else None


def slurm_records() -> list:
    return list(slurm.read_records(slurm.state_store(CondaTainerConfig())).values())


class FakeProxy:
    """A listening port and CondaTainer's shared ``proxy.pid`` pointing at it."""

    def __init__(self, data_home: Path):
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(8)
        self.port = self.socket.getsockname()[1]
        pid_file = data_home / "condatainer" / "proxy.pid"
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(
            json.dumps({"host": "127.0.0.1", "via": "login1", "port": self.port, "pid": 1}, separators=(",", ":"))
        )

    def close(self) -> None:
        self.socket.close()


async def connect(runtime: Path, kernel_id: str) -> AsyncKernelClient:
    """A client on the connection file the server wrote (tcp or ipc)."""
    client = AsyncKernelClient()
    client.load_connection_file(str(runtime / f"kernel-{kernel_id}.json"))
    # The server answers once the kernel process runs, maybe before its sockets are up:
    # without a KernelManager, a client would call one missed heartbeat a dead kernel.
    client.hb_channel.time_to_dead = 30.0
    client.start_channels()
    await client.wait_for_ready(timeout=60)
    return client


@pytest.mark.integration
def test_slurm_kernel_lifecycle_through_jupyter_server(slurm_env, slurm_cluster):
    """Start → job step in the container, with the job's variables and the proxy; execute,
    interrupt, restart in the same job, shutdown leaving no job, instance or state."""
    name = add_slurm_spec("lifecycle", slurm_args=["--partition=debug"])
    holding_before = job_holders()
    proxy = FakeProxy(slurm_env / "xdg-data")
    server = Server(slurm_env, free_port())
    timings: dict[str, float] = {}

    async def scenario(kernel_id: str) -> tuple[list[str], list[str]]:
        client = await connect(slurm_env / "runtime", kernel_id)
        try:
            out, _ = await execute(client, REPORT)
            first = out.split()
            msg_id = client.execute("import time; time.sleep(60)")
            await asyncio.sleep(1.0)
            started = time.monotonic()
            await asyncio.to_thread(server.request, "POST", f"/api/kernels/{kernel_id}/interrupt")
            reply = await reply_to(client, msg_id, timeout=10)
            assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
            timings["interrupt"] = time.monotonic() - started

            started = time.monotonic()
            await asyncio.to_thread(server.request, "POST", f"/api/kernels/{kernel_id}/restart")
            await client.wait_for_ready(timeout=60)
            timings["restart"] = time.monotonic() - started
            out, _ = await execute(client, REPORT)
            return first, out.split()
        finally:
            client.stop_channels()

    try:
        server.start()
        started = time.monotonic()
        kernel = server.request("POST", "/api/kernels", {"name": name})
        timings["start (POST)"] = time.monotonic() - started
        job_id, job_name, state = job_of(slurm_cluster, kernel["id"])
        assert state == "RUNNING"
        assert [r.slurm_job for r in slurm_records()] == [job_id]

        first, after_restart = asyncio.run(scenario(kernel["id"]))
        assert first == [
            job_id,
            first[1],
            "1",
            "/cnt/python/3.11/bin/python",
            f"http://127.0.0.1:{proxy.port}",
            f"socks5://127.0.0.1:{proxy.port}",
        ]
        assert after_restart[0] == job_id, "a restart is a new step in the same job"
        assert after_restart[1] != first[1], "…and a new step"
        assert job_name in running_instances()
        assert timings["interrupt"] < 2.0

        started = time.monotonic()
        server.request("DELETE", f"/api/kernels/{kernel['id']}")
        timings["shutdown"] = time.monotonic() - started
        assert job_id not in slurm_cluster.job_ids(), "shutdown cancels the job"
        assert job_name not in running_instances()
        assert slurm_records() == []
        assert processes_mentioning(job_name) == []
        assert list((slurm_env / "runtime" / "condatainer").glob(f"{job_name}*")) == []
        assert list((slurm_env / "runtime" / "condatainer").glob("kernel-*.env")) == []
        wait_until(lambda: job_holders() <= holding_before, 10, "the job script's sleep to end with the job")
    finally:
        server.stop()
        proxy.close()
    print("\nSLURM kernel timings (s):", {k: round(v, 2) for k, v in timings.items()})


def job_holders() -> set[str]:
    """The ``sleep 3600`` processes that hold a kernel's job (see ``slurm.job_script``)."""
    return {line for line in processes_mentioning("sleep 3600") if line.split(": ", 1)[1] == "sleep 3600 "}


@pytest.fixture
def jp_server_config(slurm_env):
    """The in-process server of the terminal test: terminals on, the cluster's variables set before it starts."""
    return {"ServerApp": {"jpserver_extensions": {"kernel_provider": True, "jupyter_server_terminals": True}}}


@pytest.mark.integration
async def test_terminal_in_a_slurm_kernel_is_a_step_of_its_job(slurm_cluster, api, jp_fetch, jp_serverapp):
    """A SLURM kernel's terminal ("Open terminal"): a shell in the kernel's instance on its node, as a step of
    its job (same node, python and job), which ends when the kernel shuts down."""
    async with server_kernel(jp_serverapp, add_slurm_spec("terminal")) as (kernel_id, client):
        kernel_side, error = await execute(
            client,
            "import os, shutil, socket; print(socket.gethostname(), shutil.which('python'), "
            "os.environ['SLURM_JOB_ID'], os.environ['IN_CONDATAINER'])",
        )
        assert error is None, error
        status, model = await api("POST", "kernels", kernel_id, "terminal")
        assert status == 201, model
        term = terminal_of(jp_serverapp, model)
        terminal_side = await asyncio.to_thread(
            printed, term, "$(hostname) $(which python) $SLURM_JOB_ID $IN_CONDATAINER"
        )
        print("terminal:", terminal_side)
        assert terminal_side == kernel_side.strip(), (terminal_side, kernel_side)
        job_id = kernel_side.split()[2]
        steps = slurm_cluster.run(slurm.steps_argv(job_id)).stdout
        assert "-terminal" in steps, steps
    await asyncio.to_thread(wait_until, lambda: not term.ptyproc.isalive(), 30, "the shell to end with the kernel")
    listed = json.loads((await jp_fetch("api", "terminals")).body)
    assert model["name"] not in [t["name"] for t in listed]
    assert job_id not in slurm_cluster.job_ids()


@pytest.mark.integration
def test_slurm_kernel_start_vs_local(slurm_env, slurm_cluster):
    """The benchmark figure: time to a first execute reply, SLURM vs local, same server."""
    name = add_slurm_spec("bench")
    server = Server(slurm_env, free_port())

    async def first_reply(kernel_id: str) -> None:
        client = await connect(slurm_env / "runtime", kernel_id)
        try:
            await execute(client, "pass")
        finally:
            client.stop_channels()

    figures = {}
    try:
        server.start()
        for label, kernel_name in [("local", KERNEL), ("slurm", name), ("local", KERNEL), ("slurm", name)]:
            started = time.monotonic()
            kernel = server.request("POST", "/api/kernels", {"name": kernel_name})
            asyncio.run(first_reply(kernel["id"]))
            figures.setdefault(label, []).append(round(time.monotonic() - started, 2))
            server.request("DELETE", f"/api/kernels/{kernel['id']}")
    finally:
        server.stop()
    print("\nkernel start to first reply (s):", figures)
    assert slurm_cluster.jobs() == []
    assert min(figures["slurm"]) < 15


@pytest.mark.integration
def test_restart_after_the_job_ended_submits_a_new_job(slurm_env, slurm_cluster):
    """A job that reached its time limit (here: cancelled by hand) kills the kernel; the
    restart that follows gets a new job, and clients keep their ports."""
    name = add_slurm_spec("ended")

    async def scenario():
        km = AsyncKernelManager(kernel_name=name)
        await km.start_kernel()
        client = km.client()
        client.start_channels()
        try:
            await client.wait_for_ready(timeout=60)
            first = (await execute(client, REPORT))[0].split()[0]
            slurm_cluster.run(["scancel", first])
            await asyncio.wait_for(km.provisioner.wait(), 30)
            await km.restart_kernel(now=True)
            await client.wait_for_ready(timeout=60)
            second = (await execute(client, REPORT))[0].split()[0]
        finally:
            client.stop_channels()
            await km.shutdown_kernel(now=True)
        return first, second

    first, second = asyncio.run(scenario())
    assert first != second
    assert slurm_cluster.jobs() == []
    assert slurm_records() == []
    assert not {n for n in running_instances() if n.startswith(slurm.JOB_PREFIX)}


@pytest.mark.integration
@pytest.mark.parametrize(
    ("config", "message", "limit"),
    [
        ({"slurm_args": ["--cpus-per-task=64"]}, "cannot start on partition debug: PartitionConfig", 10),
        ({"slurm_args": ["--time=2:00:00"]}, "cannot start on partition debug: Partition", 10),
        ({"slurm_args": ["--partition=nope"]}, "invalid partition", 10),
        (
            {"slurm_args": ["--begin=now+3600"], "slurm_launch_timeout": 3},
            "did not start within 3 s (still PENDING: BeginTime)",
            12,
        ),
    ],
    ids=["more-cpus-than-the-node", "over-partition-time-limit", "no-such-partition", "pending-past-timeout"],
)
def test_job_that_cannot_start_fails_with_slurms_reason_and_is_cancelled(
    slurm_env, slurm_cluster, caplog, config, message, limit
):
    name = add_slurm_spec("bad", **config)
    before = slurm_cluster.job_ids()

    async def scenario():
        km = AsyncKernelManager(kernel_name=name)
        started = time.monotonic()
        with pytest.raises(Exception) as error:
            await km.start_kernel()
        return time.monotonic() - started, str(error.value)

    with caplog.at_level("INFO"):
        elapsed, error = asyncio.run(scenario())
    assert message in error
    assert elapsed < limit
    assert slurm_cluster.job_ids() == before, "the job is cancelled"
    assert slurm_records() == []
    assert not {n for n in running_instances() if n.startswith(slurm.JOB_PREFIX)}
    if "slurm_launch_timeout" in config:
        assert "queued as job" in caplog.text and "on partition debug (BeginTime)" in caplog.text


@pytest.mark.integration
def test_server_crash_leaves_a_job_the_next_server_cancels(slurm_env, slurm_cluster):
    """SIGKILL the server: its job keeps running; the next server start cancels that job
    (and stops its instance) but not a job someone else submitted."""
    name = add_slurm_spec("crash", slurm_connect_ip="node")
    unrelated = slurm_cluster.run(
        ["sbatch", "--parsable", "--job-name=unrelated", "--output=/dev/null", "--wrap=sleep 300"]
    ).stdout.strip()
    server = Server(slurm_env, free_port())
    try:
        server.start()
        kernel = server.request("POST", "/api/kernels", {"name": name})
        job_id, job_name, _ = job_of(slurm_cluster, kernel["id"])
        server.kill()
        assert job_id in slurm_cluster.job_ids(), "jobs outlive a SIGKILLed server"

        server.start()
        wait_until(lambda: job_id not in slurm_cluster.job_ids(), 30, "the orphaned job to be cancelled")
        assert unrelated in slurm_cluster.job_ids(), "a job that is not ours stays"
        wait_until(lambda: job_name not in running_instances(), 10, "the orphan's instance to stop")
        # The sweep forgets the state file once it has seen the job leave the queue.
        wait_until(lambda: slurm_records() == [], 10, "the orphan's state file to go")
        assert server.request("GET", "/api/kernels") == []
    finally:
        server.stop()
        slurm_cluster.run(["scancel", unrelated], check=False)
