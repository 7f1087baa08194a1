"""``persist_kernels``: CondaTainer kernels outlive a SIGKILLed server and the next one adopts them.

A notebook session holds ``x = 42``; the server is killed with SIGKILL; the next server
(same user, same state, sessions kept on disk) lists the same session with the same kernel
id, and the kernel still has ``x == 42``, also after a clean stop and start. It restarts
and shuts down like a new one. A second kernel whose process died while no server ran is
cleaned up (its instance goes), never adopted. The same for a SLURM kernel, job and
countdown included, is part of ``test_slurm_sessions.py`` (it shares that server).
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from conftest import KERNEL, Server, connect, free_port, running_instances, set_server_config, wait_until

from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.host.instances import InstanceManager
from kernel_provider.kernel import persistence
from kernel_provider.kernel.kernelspecs import KernelspecStore, custom_spec

KERNEL_MANAGER = "kernel_provider.server.kernelmanager.CondaTainerKernelManager"


def persisting_server(layout) -> Server:
    config = {
        "ServerApp": {"kernel_manager_class": KERNEL_MANAGER},
        "CondaTainerKernelManager": {"persist_kernels": True},
        "SessionManager": {"database_filepath": str(layout / "sessions.db")},
    }
    set_server_config(layout, config)
    return Server(layout, free_port())


def output_of(layout, kernel_id: str, code: str) -> str:
    client = connect(layout, kernel_id)
    out: list[str] = []
    try:
        client.wait_for_ready(timeout=60)  # iopub subscribed too: a busy machine drops early output otherwise
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


@pytest.mark.integration
def test_a_local_kernel_survives_a_sigkilled_server(kernel_env):
    layout, kernel_name = kernel_env, KERNEL
    server = persisting_server(layout)
    try:
        server.start()
        session = server.request(
            "POST",
            "/api/sessions",
            {"path": "n.ipynb", "name": "n.ipynb", "type": "notebook", "kernel": {"name": kernel_name}},
        )
        kernel_id = session["kernel"]["id"]
        # In an instance of its own (another stack: kernels of one stack share theirs).
        KernelspecStore().write(custom_spec(["hello/1.0", "python/3.11"], label="doomed"))
        doomed = server.request("POST", "/api/kernels", {"name": "condatainer-doomed"})["id"]
        assert output_of(layout, kernel_id, "x = 42; print(x)").strip() == "42"

        server.kill()
        doomed_instance = kill_kernel_process(doomed)
        server.start()

        assert {k["id"] for k in server.request("GET", "/api/kernels")} == {kernel_id}, "adopted; the dead one not"
        sessions = server.request("GET", "/api/sessions")
        assert [(s["id"], s["kernel"]["id"]) for s in sessions] == [(session["id"], kernel_id)]
        assert output_of(layout, kernel_id, "print(x)").strip() == "42", "the same kernel, its variables intact"
        wait_until(lambda: doomed_instance not in running_instances(), 30, "the dead kernel's instance to go")
        server.stop()  # SIGTERM: the server lets go of its kernels instead of shutting them down
        server.start()
        assert output_of(layout, kernel_id, "print(x)").strip() == "42", "kept across a clean stop too"

        server.request("POST", f"/api/kernels/{kernel_id}/restart")
        assert output_of(layout, kernel_id, "print('x' in dir())").strip() == "False", "restarted like a new one"
        instance = next(
            r.provisioner_info["placement"]["instance"]
            for r in persistence.load_all(CondaTainerConfig())
            if r.kernel_id == kernel_id
        )
        server.request("DELETE", f"/api/kernels/{kernel_id}")
        assert persistence.load_all(CondaTainerConfig()) == []
        server.stop()  # its instance stayed warm for the next kernel; the server's exit stops it
        assert instance not in running_instances()
    finally:
        server.stop()  # with persist_kernels it leaves the kernels running: a failed test's must go
        asyncio.run(InstanceManager.for_config(CondaTainerConfig()).sweep_orphans())
