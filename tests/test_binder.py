"""binder/: the repo2docker steps, run as an unprivileged user, then the demo notebook headless.

Not Docker: the same files repo2docker uses, in the same order, as an ordinary user with a fresh
HOME — a fresh virtualenv with ``binder/requirements.txt``, ``binder/postBuild`` (installs this
repository, a private Apptainer in the user's home, the demo images built without root, the
kernelspecs), then ``binder/start`` running ``tests/binder_demo.py``, which executes
``binder/demo.ipynb`` with nbclient while a ``jupyter server`` runs, as in JupyterLab.

As root this acts as the test user (``scripts/setup-testuser.sh``); as an ordinary user, as
itself. The demo images are cached per user (``$JCT_CACHE/users/USER/binder``: a first build
takes minutes, later runs seconds); the local conda channel stands in for conda-forge.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import nbformat
import pytest
from conftest import CACHE

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
USER = os.environ.get("JCT_TEST_USER", "jctuser") if os.getuid() == 0 else pwd.getpwuid(os.getuid()).pw_name
SYSTEM_PYTHON = "/usr/bin/python3"  # what a fresh virtualenv is made from (Binder: its own Python)


class BinderUser:
    """Runs commands as the Binder user with a fresh HOME and nothing else of ours."""

    def __init__(self, name: str):
        try:
            pwd.getpwnam(name)
        except KeyError:
            pytest.fail(f"test user {name} is missing: run scripts/setup-testuser.sh as root (scripts/test.sh does)")
        self.name = name
        self.home = Path(tempfile.mkdtemp(prefix="jct-binder-"))
        self.persistent = CACHE / "users" / name
        if os.getuid() == 0:
            shutil.chown(self.home, name, name)
        self.env = {
            "HOME": str(self.home),
            "USER": name,
            "LOGNAME": name,
            "LANG": "C.UTF-8",
            "PATH": f"{self.home}/.local/bin:{self.home}/venv/bin:/usr/local/bin:/usr/bin:/bin",
            # Binder has no Apptainer: always use the private one setup-apptainer.sh installs.
            "JCT_APPTAINER_PREFIX": f"{self.home}/.local/opt/apptainer",
            # Kept between runs (as a Binder image keeps its build): images, downloads.
            "JCT_CACHE": str(self.persistent / "binder"),
            "PIP_CACHE_DIR": str(self.persistent / "pip"),
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }

    def run(self, *argv: str, extra_env: dict | None = None, timeout: float = 1800) -> subprocess.CompletedProcess:
        env = {**self.env, **(extra_env or {})}
        prefix = ["runuser", "-u", self.name, "--"] if os.getuid() == 0 else []
        started = time.monotonic()
        # Output through files: a process left behind (a kernel's instance) must not hold a pipe open.
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            returncode = subprocess.run(
                [*prefix, "env", "-i", *[f"{k}={v}" for k, v in env.items()], *argv],
                stdout=out,
                stderr=err,
                text=True,
                cwd=self.home,
                timeout=timeout,
            ).returncode
            out.seek(0), err.seek(0)
            result = subprocess.CompletedProcess(argv, returncode, out.read(), err.read())
        print(f"[{time.monotonic() - started:6.1f} s] {' '.join(argv[:3])}", flush=True)
        assert result.returncode == 0, (
            f"{argv} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
        return result

    def running(self) -> set[str]:
        prefix = ["runuser", "-u", self.name, "--"] if os.getuid() == 0 else []
        out = subprocess.run(
            [*prefix, "env", "-i", *[f"{k}={v}" for k, v in self.env.items()], "apptainer", "instance", "list"],
            capture_output=True,
            text=True,
            cwd=self.home,
        ).stdout
        return {line.split()[0] for line in out.splitlines()[1:] if line.strip()}

    def cleanup(self) -> None:
        for name in self.running():
            if name.startswith("jct-"):
                prefix = ["runuser", "-u", self.name, "--"] if os.getuid() == 0 else []
                subprocess.run(
                    [
                        *prefix,
                        "env",
                        "-i",
                        *[f"{k}={v}" for k, v in self.env.items()],
                        "apptainer",
                        "instance",
                        "stop",
                        name,
                    ],
                    capture_output=True,
                    cwd=self.home,
                )
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture
def binder_user(conda_channel):
    user = BinderUser(USER)
    yield user
    user.cleanup()


def outputs(cell) -> str:
    """A cell's stream text, results and error, as one string."""
    parts = []
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream":
            parts.append(output["text"])
        elif output["output_type"] in ("execute_result", "display_data"):
            parts.append(output.get("data", {}).get("text/plain", ""))
        elif output["output_type"] == "error":
            parts.append(f"ERROR {output['ename']}: {output['evalue']}")
    return "".join(parts)


@pytest.mark.timeout(2400)  # a first run builds the images (minutes); later ones reuse them
def test_binder_steps_and_demo_notebook(binder_user, conda_channel):
    user = binder_user
    # 1. repo2docker: a Python environment with binder/requirements.txt.
    user.run(SYSTEM_PYTHON, "-m", "venv", str(user.home / "venv"))
    user.run("pip", "install", "-q", "-r", str(REPO / "binder" / "requirements.txt"))
    # 2. binder/postBuild (no root; apt.txt's packages are installed on this machine).
    user.run("bash", str(REPO / "binder" / "postBuild"))
    assert (user.home / ".local/opt/apptainer/root/usr/bin/apptainer").is_file()
    images = user.home / ".local/share/condatainer/images"
    assert {"ubuntu24--base_image.sif", "python--3.11.sqf"} <= {p.name for p in images.iterdir()}
    assert (user.home / ".local/share/jupyter/kernels/condatainer-python-3.11/kernel.json").is_file()
    # 3. binder/start, then the notebook as the user would run it in JupyterLab.
    out = user.home / "demo.executed.ipynb"
    demo_env = {
        # conda-forge and bioconda resolve to the local channel; its package stands in for tqdm.
        "APPTAINERENV_MAMBA_CHANNEL_ALIAS": conda_channel.alias,
        "APPTAINERENV_DEMO_PACKAGE": "demopkg",
    }
    try:
        ran = user.run(
            "bash",
            str(REPO / "binder" / "start"),
            "python",
            str(REPO / "tests" / "binder_demo.py"),
            str(REPO / "binder" / "demo.ipynb"),
            str(out),
            "--bind",
            str(conda_channel.root),
            extra_env=demo_env,
        )
        print(ran.stdout.strip().splitlines()[-1])
    finally:
        if out.exists():
            print(
                json.dumps(
                    [outputs(c) for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code"], indent=1
                )
            )
    cells = [c for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code"]
    info, where, create, env_info, install, imported = (outputs(c) for c in cells)
    assert "python/3.11" in info and "writable env: none" in info
    assert where.split()[:3] == ["/cnt/python/3.11/bin/python", "IN_CONDATAINER", "="]
    assert "created" in create and "Switch to the kernel 'CondaTainer: demo (env)'" in create
    assert (images / "demo.img").is_file()
    assert f"writable env: {images / 'demo.img'} at /ext3/env" in env_info
    assert "ERROR" not in install, install
    assert imported.startswith("demopkg 0.1 from /ext3/env/lib/python3.11/site-packages/demopkg/"), imported
    assert all("ERROR" not in outputs(c) for c in cells)
    assert user.running() == set(), "the demo's kernels stopped their instances"
