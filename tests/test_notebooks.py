"""Notebooks run headless on ``CondaTainer: python/3.11`` with the tools users run them with:
papermill (a parametrised notebook), nbclient, and ``jupyter nbconvert --execute``.

Each starts the kernel by its kernelspec name, so through our provisioner, in an Apptainer
instance, and stops it at the end; none leaves an instance behind. The executed notebooks hold
the kernel's stack record (``metadata.language_info.condatainer``), which the server compares.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import nbformat
import pytest
from conftest import KERNEL, reply_to, server_kernel
from nbformat.v4 import new_code_cell, new_notebook

from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.host.state import StateStore
from kernel_provider.kernel.kernelspecs import KernelspecStore, custom_spec

pytestmark = pytest.mark.integration

WHERE = "import os, sys; print(os.environ['IN_CONDATAINER'], sys.prefix)"


@pytest.fixture
def jp_server_config(kernel_env):
    return {"ServerApp": {"jpserver_extensions": {"kernel_provider": True}}}


def notebook(*cells, kernel: str = KERNEL) -> nbformat.NotebookNode:
    nb = new_notebook(cells=list(cells))
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": kernel, "language": "python"}
    return nb


def assert_no_instance_left() -> None:
    """Every kernel's instance of this test's state stopped (other users' instances may run)."""
    left = {r.name for r in StateStore(CondaTainerConfig().instance_state_dir).ours()}
    assert not left, f"instances left running: {left}"


def text_of(cell) -> str:
    parts = []
    for output in cell.outputs:
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("execute_result", "display_data"):
            parts.append(output.data.get("text/plain", "") + "\n")
        elif output.output_type == "error":
            parts.append(f"ERROR {output.ename}: {output.evalue}\n")
    return "".join(parts)


def test_papermill_runs_a_parametrised_notebook(kernel_env):
    import papermill

    parameters = new_code_cell("n = 1\ngreeting = 'default'", metadata={"tags": ["parameters"]})
    source = kernel_env / "report.ipynb"
    nbformat.write(notebook(parameters, new_code_cell("print(greeting, n * 2)"), new_code_cell(WHERE)), source)

    out = kernel_env / "report-out.ipynb"
    papermill.execute_notebook(str(source), str(out), parameters={"n": 21, "greeting": "hi"}, progress_bar=False)

    cells = nbformat.read(out, as_version=4).cells
    assert "injected-parameters" in cells[1].metadata["tags"], "papermill injects its cell after 'parameters'"
    assert [text_of(c) for c in cells[2:]] == ["hi 42\n", "1 /cnt/python/3.11\n"]
    assert out.read_text().count('"name": "condatainer-python-3.11"') == 1, "the kernelspec papermill ran"
    assert_no_instance_left()


def test_nbclient_and_nbconvert_execute_a_notebook(kernel_env):
    from nbclient import NotebookClient

    cells = [
        new_code_cell(WHERE),
        new_code_cell("6 * 7"),
        new_code_cell("from IPython.display import Markdown; Markdown('**in the container**')"),
    ]
    nb = notebook(*cells)
    NotebookClient(nb, kernel_name=KERNEL, timeout=120, startup_timeout=120).execute()
    assert [text_of(c) for c in nb.cells] == [
        "1 /cnt/python/3.11\n",
        "42\n",
        "<IPython.core.display.Markdown object>\n",
    ]
    assert nb.cells[2].outputs[0].data["text/markdown"] == "**in the container**"

    source = kernel_env / "convert.ipynb"
    nbformat.write(notebook(*cells), source)
    subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    executed = nbformat.read(kernel_env / "convert.nbconvert.ipynb", as_version=4)
    assert [text_of(c) for c in executed.cells] == [text_of(c) for c in nb.cells]
    assert_no_instance_left()


def nbconvert_execute(source) -> nbformat.NotebookNode:
    subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return nbformat.read(source.with_suffix(".nbconvert.ipynb"), as_version=4)


async def test_executed_notebooks_record_their_stack(api, kernel_env, jp_serverapp):
    """nbconvert (a forked kernel) and papermill (a kernel started by exec), each in a process of its
    own as users run them, save the kernel's stack record in ``language_info``: the record the
    server's stack route gives for a kernel of that stack. The compare route reads it from the
    notebook's metadata and sees an overlay change."""
    forked = custom_spec(["python/3.11", "hello/1.0"], label="recorded")
    no_fork = {"fork_server": False}
    execd = custom_spec(["python/3.11", "hello/1.0"], label="recorded exec", extra_config=no_fork)
    for spec in (forked, execd):
        KernelspecStore().write(spec)
    source = kernel_env / "recorded.ipynb"
    nbformat.write(notebook(new_code_cell("6 * 7"), kernel=forked.name), source)
    converted = await asyncio.to_thread(nbconvert_execute, source)
    papermilled = kernel_env / "recorded-pm.ipynb"
    papermill = [
        sys.executable,
        "-m",
        "papermill",
        "--no-progress-bar",
        "-k",
        execd.name,
        str(source),
        str(papermilled),
    ]
    await asyncio.to_thread(subprocess.run, papermill, check=True, capture_output=True, timeout=300)
    by_papermill = nbformat.read(papermilled, as_version=4)

    async with server_kernel(jp_serverapp, forked.name) as (kernel_id, client):
        assert jp_serverapp.kernel_manager.get_kernel(kernel_id).provisioner.forked
        status, route = await api("GET", "kernels", kernel_id, "stack")
        info = await reply_to(client, client.kernel_info())
        await jp_serverapp.kernel_manager.restart_kernel(kernel_id)
        await client.wait_for_ready(timeout=120)
        restarted = await reply_to(client, client.kernel_info())
    assert status == 200, route
    assert info["content"]["language_info"]["condatainer"] == route
    assert restarted["content"]["language_info"]["condatainer"] == route, "a restart hands the record on"
    recorded = converted.metadata.language_info["condatainer"]
    print("recorded:", recorded)
    assert [o["name"] for o in recorded["overlays"]] == ["python/3.11", "hello/1.0"]
    assert recorded == route
    assert by_papermill.metadata.language_info["condatainer"] == route
    assert converted.metadata.language_info["name"] == "python", "the rest of language_info is ipykernel's"

    _, same = await api("POST", "stack", "compare", body={"metadata": converted.metadata})
    assert same == {"differences": []}
    hello = kernel_env / "images" / "hello--1.0.sqf"  # a link to the cache's image: replaced, never written
    content = hello.read_bytes()
    hello.unlink()
    hello.write_bytes(content)
    os.utime(hello, (1, 1))
    _, changed = await api("POST", "stack", "compare", body={"metadata": by_papermill.metadata})
    assert changed == {"differences": ["hello/1.0 was changed (size or time) since this notebook ran"]}
    status, refused = await api("POST", "stack", "compare", body={"metadata": {"language_info": {"name": "python"}}})
    assert status == 400 and "no stack record" in refused["message"], refused
