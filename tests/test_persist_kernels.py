"""``persist_kernels``: CondaTainer kernels outlive a SIGKILLed server and the next one adopts them.

A notebook session holds ``x = 42``; the server is killed with SIGKILL; the next server
(same user, same state, sessions kept on disk) lists the same session with the same kernel
id, and the kernel still has ``x == 42``. It restarts and shuts down like a new one. A
second kernel whose process died while no server ran is cleaned up (its instance or job
goes), never adopted. Locally and on the session's private SLURM cluster.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
from conftest import KERNEL, Server, connect, free_port, running_instances, sync_specs, wait_until

from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.kernel import persistence
from kernel_provider.kernel.kernelspecs import KernelspecStore, custom_spec

KERNEL_MANAGER = "kernel_provider.server.kernelmanager.CondaTainerKernelManager"


def persisting_server(layout) -> Server:
    config = {
        "ServerApp": {"kernel_manager_class": KERNEL_MANAGER},
        "CondaTainerKernelManager": {"persist_kernels": True},
        "SessionManager": {"database_filepath": str(layout / "sessions.db")},
    }
    (layout / "config" / "jupyter_server_config.json").write_text(json.dumps(config))
    return Server(layout, free_port())


def output_of(layout, kernel_id: str, code: str) -> str:
    client = connect(layout, kernel_id)
    out: list[str] = []
    try:
        client.execute_interactive(
            code,
            timeout=60,
            output_hook=lambda m: out.append(m["content"].get("text", "")) if m["msg_type"] == "stream" else None,
        )
    finally:
        client.stop_channels()
    return "".join(out)


def kill_kernel_process(kernel_id: str) -> str:
    """SIGKILL a kernel's process group (no server runs to notice); the name of its instance."""
    record = next(r for r in persistence.load_all(CondaTainerConfig()) if r.kernel_id == kernel_id)
    os.killpg(record.pid, signal.SIGKILL)
    wait_until(lambda: not record.process_alive(), 10, "the kernel's process to die")
    return record.provisioner_info["placement"]["instance"]


def survive_a_sigkill(layout, kernel_name: str, job_of=None) -> None:
    server = persisting_server(layout)
    try:
        server.start()
        session = server.request(
            "POST",
            "/api/sessions",
            {"path": "n.ipynb", "name": "n.ipynb", "type": "notebook", "kernel": {"name": kernel_name}},
        )
        kernel_id = session["kernel"]["id"]
        doomed = server.request("POST", "/api/kernels", {"name": kernel_name})["id"]
        assert output_of(layout, kernel_id, "x = 42; print(x)").strip() == "42"
        job = job_of(kernel_id) if job_of else None

        server.kill()
        doomed_instance = kill_kernel_process(doomed)
        server.start()

        assert {k["id"] for k in server.request("GET", "/api/kernels")} == {kernel_id}, "adopted; the dead one not"
        sessions = server.request("GET", "/api/sessions")
        assert [(s["id"], s["kernel"]["id"]) for s in sessions] == [(session["id"], kernel_id)]
        assert output_of(layout, kernel_id, "print(x)").strip() == "42", "the same kernel, its variables intact"
        if job_of:
            assert job_of(kernel_id) == job, "the same job"
        wait_until(lambda: doomed_instance not in running_instances(), 30, "the dead kernel's instance to go")

        server.request("POST", f"/api/kernels/{kernel_id}/restart")
        assert output_of(layout, kernel_id, "print('x' in dir())").strip() == "False", "restarted like a new one"
        instance = next(
            r.provisioner_info["placement"]["instance"]
            for r in persistence.load_all(CondaTainerConfig())
            if r.kernel_id == kernel_id
        )
        server.request("DELETE", f"/api/kernels/{kernel_id}")
        assert instance not in running_instances()
        assert persistence.load_all(CondaTainerConfig()) == []
    finally:
        server.stop()


@pytest.mark.integration
def test_a_local_kernel_survives_a_sigkilled_server(kernel_env):
    survive_a_sigkill(kernel_env, KERNEL)


@pytest.mark.integration
def test_a_slurm_kernel_survives_a_sigkilled_server(user_layout, slurm_cluster, monkeypatch):
    for key, value in slurm_cluster.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("XDG_DATA_HOME", str(user_layout / "xdg-data"))
    sync_specs()
    spec = custom_spec(["python/3.11"], label="persist", slurm=True)
    KernelspecStore().write(spec)

    def job_of(kernel_id: str) -> str:
        return next(job for job, name, _ in slurm_cluster.jobs() if name.startswith(f"jcts-{kernel_id[:8]}"))

    survive_a_sigkill(user_layout, spec.name, job_of)
    assert slurm_cluster.jobs() == [], "the dead kernel's job and the shut-down one's are gone"
