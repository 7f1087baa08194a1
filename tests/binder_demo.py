"""Execute ``binder/demo.ipynb`` headless, as a Binder user would run it in JupyterLab.

Run by ``tests/test_binder.py`` through ``binder/start`` (so after the demo set-up), with the
Python of the fresh Binder virtualenv, as the unprivileged user:

    binder/start python tests/binder_demo.py NOTEBOOK OUT [--bind DIR]

A ``jupyter server`` runs meanwhile, as in JupyterLab: ``%condatainer create`` asks it to make
the env. The cells run with nbclient in the notebook's kernel (``CondaTainer: python/3.11``)
up to the cell tagged ``switch-kernel:NAME``; from there on in kernel NAME, as the notebook
tells its reader to switch. ``--bind`` directories are bound into every container (a local
conda channel). Writes the executed notebook to OUT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import nbformat
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.paths import jupyter_runtime_dir
from nbclient import NotebookClient
from traitlets.config import Config

SWITCH_TAG = "switch-kernel:"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path, binds: list[str]) -> tuple[subprocess.Popen, str]:
    token, port = secrets.token_hex(16), free_port()
    argv = [
        sys.executable,
        "-m",
        "jupyter_server",
        "--no-browser",
        f"--port={port}",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
    ]
    argv += [f"--CondaTainerConfig.extra_binds={bind}" for bind in binds]
    log = open(root / "server.log", "w")
    server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}api/status?token={token}", timeout=2).read()
            return server, url
        except OSError:
            if server.poll() is not None:
                break
            time.sleep(0.3)
    server.kill()
    raise SystemExit(f"jupyter server did not start:\n{(root / 'server.log').read_text()[-3000:]}")


async def run_part(nb, indices: list[int], kernel: str, binds: list[str], cwd: Path) -> None:
    config = Config({"CondaTainerConfig": {"extra_binds": binds}})
    km = AsyncKernelManager(kernel_name=kernel, config=config)
    # Where a server puts it (a bare KernelManager would use a temporary file).
    km.connection_file = os.path.join(jupyter_runtime_dir(), f"kernel-{uuid.uuid4()}.json")
    client = NotebookClient(nb, km=km, timeout=600, kernel_name=kernel, resources={"metadata": {"path": str(cwd)}})
    try:
        async with client.async_setup_kernel():
            for index in indices:
                await client.async_execute_cell(nb.cells[index], index)
    finally:
        if km.has_kernel:  # nbclient leaves a kernel manager it was given running
            await km.shutdown_kernel()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("notebook")
    parser.add_argument("out")
    parser.add_argument("--bind", action="append", default=[])
    args = parser.parse_args()
    nb = nbformat.read(args.notebook, as_version=4)
    parts: list[tuple[str, list[int]]] = [(nb.metadata.kernelspec.name, [])]
    for index, cell in enumerate(nb.cells):
        tags = [t for t in cell.metadata.get("tags", []) if t.startswith(SWITCH_TAG)]
        if tags:
            parts.append((tags[0][len(SWITCH_TAG) :], []))
        if cell.cell_type == "code":
            parts[-1][1].append(index)
    cwd = Path(args.out).resolve().parent
    started = time.monotonic()
    server, url = start_server(cwd, args.bind)
    timings = {"server start": round(time.monotonic() - started, 1)}
    try:
        for kernel, indices in parts:
            started = time.monotonic()
            asyncio.run(run_part(nb, indices, kernel, args.bind, cwd))
            timings[kernel] = round(time.monotonic() - started, 1)
    finally:
        server.terminate()
        server.wait(timeout=60)
        nbformat.write(nb, args.out)
    print(json.dumps({"server": url, "parts": [[k, i] for k, i in parts], "seconds": timings}))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
