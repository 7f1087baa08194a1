"""Notebooks run headless on ``CondaTainer: python/3.11`` with the tools users run them with:
papermill (a parametrised notebook), nbclient, and ``jupyter nbconvert --execute``.

Each starts the kernel by its kernelspec name, so through our provisioner, in an Apptainer
instance, and stops it at the end; none leaves an instance behind.
"""

from __future__ import annotations

import subprocess
import sys

import nbformat
import pytest
from conftest import KERNEL
from nbformat.v4 import new_code_cell, new_notebook

from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.host.state import StateStore

pytestmark = pytest.mark.integration

WHERE = "import os, sys; print(os.environ['IN_CONDATAINER'], sys.prefix)"


def notebook(*cells) -> nbformat.NotebookNode:
    nb = new_notebook(cells=list(cells))
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "CondaTainer: python/3.11", "language": "python"}
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
