"""A JupyterLab terminal in a kernel's container (jupyter_server's terminals): its shell runs in the
kernel's own instance with the kernel's environment, and ends when the kernel stops."""

from __future__ import annotations

import asyncio
import json

import pytest
from conftest import (
    RUNTIMES_AND_OCI,
    Server,
    env_kernel,
    free_port,
    printed,
    processes_mentioning,
    run_cell,
    server_kernel,
    terminal_of,
    wait_until,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def jp_server_config(kernel_env):
    return {"ServerApp": {"jpserver_extensions": {"kernel_provider": True, "jupyter_server_terminals": True}}}


@pytest.fixture
def terminals_end(jp_serverapp):
    """Ends the server's terminals after the test: the in-process server's teardown leaves them
    running, and a terminal on an image holds its shared lock, which would block a later test's
    LOCK_EX on the same (hard-linked) file. Last among a test's fixtures, so that the server
    starts after what configures it."""
    yield
    for term in list(jp_serverapp.web_app.settings["terminal_manager"].terminals.values()):
        term.ptyproc.terminate(force=True)


async def test_terminal_runs_in_the_kernels_container(
    channel_env, api, jp_fetch, jp_serverapp, kernel_env, terminals_end
):
    async with env_kernel(api, jp_serverapp, "tenv", ["zlib", "demo-tool"]) as (kernel_id, client):
        kernel_side, error = await run_cell(
            client,
            "import shutil, os; print(shutil.which('python'), shutil.which('demo-tool'), os.environ['CONDA_PREFIX'])",
        )
        assert error is None, error
        status, model = await api("POST", "kernels", kernel_id, "terminal")
        assert status == 201, model
        term = terminal_of(jp_serverapp, model)
        terminal_side = await asyncio.to_thread(printed, term, "$(which python) $(which demo-tool) $CONDA_PREFIX")
        print("terminal:", terminal_side)
        assert terminal_side == kernel_side.strip(), (terminal_side, kernel_side)
        listed = json.loads((await jp_fetch("api", "terminals")).body)
        assert model["name"] in [t["name"] for t in listed]
    # The instance stopped with the kernel, and the shell with it; the terminal is gone.
    await asyncio.to_thread(wait_until, lambda: not term.ptyproc.isalive(), 30, "the shell to end with the kernel")
    listed = json.loads((await jp_fetch("api", "terminals")).body)
    assert model["name"] not in [t["name"] for t in listed]


def stack_env_files(runtime) -> list:
    return sorted((runtime / "condatainer").glob("terminal-*.env"))


async def test_terminal_on_an_env_without_a_kernel_sees_what_its_kernel_sees(
    channel_env, api, jp_fetch, jp_serverapp, kernel_env, terminals_end
):
    """Terminal on an env row of the panel: the stack of the env's kernel, the env read-only; refused while
    that kernel has the env mounted read-write."""
    async with env_kernel(api, jp_serverapp, "tenv", ["zlib", "demo-tool"]) as (kernel_id, client):
        kernel_side, error = await run_cell(
            client,
            "import shutil, os; print(shutil.which('python'), shutil.which('demo-tool'), os.environ['CONDA_PREFIX'])",
        )
        assert error is None, error
        status, refused = await api("POST", "overlays", "tenv", "terminal")
        assert status == 409 and "open read-write by" in refused["message"], refused
    from kernel_provider.host.locks import is_locked, locked_files

    env_img = next((kernel_env / "images").glob("tenv*.img"))
    await asyncio.to_thread(
        wait_until,
        lambda: not is_locked(str(env_img), locked_files()),
        60,
        "the kernel's instance to let go of the env",
    )
    status, model = await api("POST", "overlays", "tenv", "terminal")
    assert status == 201, model
    assert "tenv is mounted read-only" in model["banner"], model
    term = terminal_of(jp_serverapp, model)
    shown = await asyncio.to_thread(
        wait_until, lambda: "\n" in (out := "".join(term.read_buffer)) and out, 60, "the terminal's first line"
    )
    assert shown.splitlines()[0] == model["banner"], shown
    terminal_side = await asyncio.to_thread(printed, term, "$(which python) $(which demo-tool) $CONDA_PREFIX")
    assert terminal_side == kernel_side.strip(), (terminal_side, kernel_side)
    writes = await asyncio.to_thread(printed, term, "$(touch /ext3/env/x 2>/dev/null && echo wrote || echo read-only)")
    assert writes == "read-only"
    # While the terminal is open, the env's kernel cannot have it read-write, and says why.
    started = await jp_fetch(
        "api", "kernels", method="POST", body=json.dumps({"name": "condatainer-tenv"}), raise_error=False
    )
    assert started.code == 500 and "tenv.img is in use" in started.body.decode(), started.body
    assert len(stack_env_files(kernel_env / "runtime")) == 1

    await jp_fetch("api", "terminals", model["name"], method="DELETE")
    listed = jp_serverapp.web_app.settings["terminal_manager"].terminals
    await asyncio.to_thread(wait_until, lambda: model["name"] not in listed, 30, "the terminal to close")
    status, model = await api("POST", "overlays", "hello/1.0", "terminal")  # the next one removes the ended one's file
    assert status == 201, model
    assert len(stack_env_files(kernel_env / "runtime")) == 1


@pytest.mark.parametrize("container_runtime", RUNTIMES_AND_OCI, indirect=True)
async def test_terminal_on_an_overlay_has_its_sidecar_and_the_python_its_kernel_gets(
    request, container_runtime, api, jp_serverapp, kernel_env, terminals_end
):
    """An overlay without Python and without a kernel: the terminal's stack is the one "Make kernel…"
    then makes (python/3.11 first), with the overlay's .env sidecar variables; on each runtime, and
    in SingularityCE's OCI mode, where the terminal and the kernel are containers of their own."""
    status, model = await api("POST", "overlays", "hello/1.0", "terminal")
    assert status == 201, model
    assert "read-only" not in model["banner"], model
    argv = terminal_of(jp_serverapp, model).ptyproc.argv
    assert container_runtime in argv and ("--oci" in argv) == request.node.callspec.id.endswith("-oci"), argv
    # The terminal holds its images as a kernel does: the overlay cannot be deleted under it.
    await asyncio.to_thread(printed, terminal_of(jp_serverapp, model), "up")
    status, refused = await api("DELETE", "overlays", "hello/1.0")
    assert status == 409 and "cannot be deleted" in refused["message"], refused
    terminal_side = await asyncio.to_thread(
        printed, terminal_of(jp_serverapp, model), "$(which python) $HELLO_GREETING $PYTHONNOUSERSITE"
    )

    status, made = await api("POST", "kernelspecs", body={"overlays": ["hello/1.0"]})
    assert status == 201 and made["overlays"] == ["python/3.11", "hello/1.0"], made
    async with server_kernel(jp_serverapp, made["kernelspec"]) as (_, client):
        kernel_side, error = await run_cell(
            client,
            "import shutil, os; print(shutil.which('python'), os.environ['HELLO_GREETING'], "
            "os.environ['PYTHONNOUSERSITE'])",
        )
        assert error is None, error
    assert terminal_side == kernel_side.strip() == "/cnt/python/3.11/bin/python hi from /cnt/hello/1.0 1"
    # Closed, it lets its images go (a shared lock left behind would block a later LOCK_EX on them).
    env_file = argv[argv.index("--env-file") + 1]  # in the command line of each process of the terminal
    await jp_serverapp.web_app.settings["terminal_manager"].terminate(model["name"], force=True)
    ended = "the terminal's processes to end"
    await asyncio.to_thread(wait_until, lambda: not processes_mentioning(env_file), 60, ended)


@pytest.mark.parametrize(
    ("name", "status", "message"),
    [
        ("../../etc/passwd", 400, "invalid"),
        ("a;b", 400, "invalid"),
        ("$(reboot)", 400, "invalid"),
        ("nosuch", 404, "not found"),
        ("ubuntu24/base_image", 400, "base image"),
    ],
)
async def test_a_bad_overlay_name_gets_no_terminal(api, jp_fetch, kernel_env, name, status, message):
    answer, body = await api("POST", "overlays", name, "terminal")
    assert answer == status and message in body["message"], body
    assert json.loads((await jp_fetch("api", "terminals")).body) == []
    assert stack_env_files(kernel_env / "runtime") == []


def test_a_crashed_servers_terminal_env_file_goes_at_the_next_start(kernel_env):
    """A server killed with a stack terminal open leaves the terminal's env file; the next server's
    start removes it, and keeps those of servers that still run (here, on this host, the test's own
    process; and one on another host, which is never ours to judge)."""
    from kernel_provider.host.state import Owner
    from kernel_provider.kernel.stackshell import env_file_name, env_file_owner

    runtime = kernel_env / "runtime"
    server = Server(kernel_env, free_port())
    try:
        server.start()
        model = server.request("POST", "/condatainer/api/overlays/hello/1.0/terminal")
        assert model["name"], model
        killed = server.process.pid
        server.kill()
        left = stack_env_files(runtime)
        wait_until(lambda: not processes_mentioning(left[0].name), 60, "the killed server's terminal to end")
        assert [env_file_owner(path.name).pid for path in left] == [killed], left
        live = runtime / "condatainer" / env_file_name(Owner.current())
        elsewhere = runtime / "condatainer" / env_file_name(Owner(killed, 1, "another-host.example"))
        for path in (live, elsewhere):
            path.write_text("")
        server.start()
        wait_until(lambda: not left[0].exists(), 60, "the next server to remove the dead server's env file")
        assert stack_env_files(runtime) == sorted([live, elsewhere])
    finally:
        server.stop()
