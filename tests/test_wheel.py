"""The wheel users install: built from a clean checkout, installed into a fresh virtualenv.

``git clone`` of this checkout's HEAD (nothing uncommitted, no build output), ``python -m build
--wheel`` — hatch-jupyter-builder builds the labextension with ``jlpm build:prod``, using the
``node_modules`` that ``scripts/setup.sh`` installed into this checkout (symlinked: nothing is
downloaded) — then a fresh virtualenv (not ``--system-site-packages``) gets the wheel and
JupyterLab (pip's cache makes that quick). From that install only: ``jupyter condatainer
--help``, the server extension enabled, the prebuilt labextension listed, and a kernel started
on ``CondaTainer: python/3.11``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import KERNEL

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"  # what a user's fresh virtualenv is made from

# Started by the fresh install's own Python: jupyter_client finds our provisioner through the
# wheel's entry points and the kernelspec that the wheel's CLI wrote.
KERNEL_CHECK = textwrap.dedent(
    """
    import json, sys
    from jupyter_client.manager import start_new_kernel
    manager, client = start_new_kernel(kernel_name=sys.argv[1], startup_timeout=180)
    try:
        reply = client.execute_interactive(
            "import os, sys; print(os.environ['IN_CONDATAINER'], sys.executable)", timeout=120,
            output_hook=lambda m: m["msg_type"] == "stream" and print("OUT", m["content"]["text"].strip()),
        )
        print("STATUS", reply["content"]["status"])
        print("PROVISIONER", type(manager.provisioner).__module__)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=False)
    """
)


def step(argv: list[str], env: dict, cwd: Path, timeout: float = 600) -> str:
    started = time.monotonic()
    result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    print(f"[{time.monotonic() - started:5.1f} s] {' '.join(map(str, argv[:4]))}", flush=True)
    assert result.returncode == 0, (
        f"{argv} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout + result.stderr


@pytest.mark.timeout(900)
def test_wheel_from_a_clean_checkout_installs_and_runs_a_kernel(kernel_env, tmp_path):
    node_modules = REPO / "labextension" / "node_modules"
    if not node_modules.is_dir():
        pytest.fail(f"{node_modules} is missing: run scripts/setup.sh (it installs the labextension's node tooling)")
    checkout = tmp_path / "checkout"
    host_env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    step(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(checkout)], host_env, tmp_path)
    assert not (checkout / "kernel_provider" / "labextension").exists(), "a clean checkout has no built labextension"
    (checkout / "labextension" / "node_modules").symlink_to(node_modules)
    # jlpm (jupyter_builder) comes from the shared venv's PATH, as scripts/build-labextension.sh uses it.
    step([sys.executable, "-m", "build", "--wheel", "-o", str(tmp_path / "dist"), str(checkout)], host_env, tmp_path)
    (wheel,) = (tmp_path / "dist").glob("jupyter_condatainer-*-py3-none-any.whl")

    venv = tmp_path / "venv"
    step([SYSTEM_PYTHON, "-m", "venv", str(venv)], host_env, tmp_path)
    fresh = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTHON", "VIRTUAL_ENV", "JUPYTER_PREFER"))
    }
    fresh["PATH"] = f"{venv / 'bin'}:{os.environ['PATH']}"
    step([str(venv / "bin" / "pip"), "install", "-q", f"{wheel}[lab]"], fresh, tmp_path)
    installed = step(
        [str(venv / "bin" / "python"), "-c", "import kernel_provider; print(kernel_provider.__file__)"], fresh, tmp_path
    )
    assert installed.strip().startswith(str(venv)), f"not imported from the fresh install: {installed}"

    help_text = step([str(venv / "bin" / "jupyter"), "condatainer", "--help"], fresh, tmp_path)
    assert "kernelspecs" in help_text and "instances" in help_text, help_text
    extensions = step([str(venv / "bin" / "jupyter"), "server", "extension", "list"], fresh, tmp_path)
    assert any("kernel_provider" in line and "enabled" in line for line in extensions.splitlines()), extensions
    labextensions = step([str(venv / "bin" / "jupyter"), "labextension", "list"], fresh, tmp_path)
    (listed,) = [line for line in labextensions.splitlines() if "jupyter-condatainer" in line]
    assert "enabled" in listed and "OK" in listed and "(python, jupyter-condatainer)" in listed, labextensions
    shipped = venv / "share" / "jupyter" / "labextensions" / "jupyter-condatainer"
    assert json.loads((shipped / "install.json").read_text())["packageManager"] == "python"
    assert list((shipped / "static").glob("remoteEntry.*.js")), "the prebuilt labextension's bundle"

    # kernel_env's kernelspec is gone from this user's view: the fresh install's CLI writes it again.
    (kernel_env / "data" / "kernels" / KERNEL / "kernel.json").unlink()
    step([str(venv / "bin" / "jupyter"), "condatainer", "kernelspecs", "sync"], fresh, tmp_path)
    out = step([str(venv / "bin" / "python"), "-c", KERNEL_CHECK, KERNEL], fresh, kernel_env, timeout=300)
    assert "OUT 1 /cnt/python/3.11/bin/python" in out, out
    assert "STATUS ok" in out and "PROVISIONER kernel_provider.kernel.provisioner" in out, out
