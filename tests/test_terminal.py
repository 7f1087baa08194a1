"""A JupyterLab terminal in a kernel's container (jupyter_server's terminals): its shell runs in the
kernel's own instance with the kernel's environment, and ends when the kernel stops."""

from __future__ import annotations

import asyncio
import json

import pytest
from conftest import env_kernel, run_cell, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def jp_server_config(kernel_env):
    return {"ServerApp": {"jpserver_extensions": {"kernel_provider": True, "jupyter_server_terminals": True}}}


def typed(term, text: str, marker: str, timeout: float = 60) -> str:
    """Type a line into a terminado terminal; what it printed once ``marker`` appeared."""
    term.ptyproc.write(text + "\r")
    return wait_until(
        lambda: (out := "".join(term.read_buffer)).count(marker) >= 2 and out, timeout, f"{marker!r} in the terminal"
    )


async def test_terminal_runs_in_the_kernels_container(channel_env, api, jp_fetch, jp_serverapp, kernel_env):
    async with env_kernel(api, jp_serverapp, "tenv", ["zlib", "demo-tool"]) as (kernel_id, client):
        kernel_side, error = await run_cell(
            client,
            "import shutil, os; print(shutil.which('python'), shutil.which('demo-tool'), os.environ['CONDA_PREFIX'])",
        )
        assert error is None, error
        status, model = await api("POST", "kernels", kernel_id, "terminal")
        assert status == 201, model
        term = jp_serverapp.web_app.settings["terminal_manager"].get_terminal(model["name"])
        out = await asyncio.to_thread(
            typed, term, "echo TERM-$(which python) $(which demo-tool) $CONDA_PREFIX -END", "-END"
        )
        terminal_side = out.split("TERM-")[-1].split(" -END")[0].strip()
        print("terminal:", terminal_side)
        assert terminal_side == kernel_side.strip(), (terminal_side, kernel_side)
        listed = json.loads((await jp_fetch("api", "terminals")).body)
        assert model["name"] in [t["name"] for t in listed]
    # The instance stopped with the kernel, and the shell with it; the terminal is gone.
    await asyncio.to_thread(wait_until, lambda: not term.ptyproc.isalive(), 30, "the shell to end with the kernel")
    listed = json.loads((await jp_fetch("api", "terminals")).body)
    assert model["name"] not in [t["name"] for t in listed]
