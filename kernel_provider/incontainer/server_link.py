"""The kernel's way back to its Jupyter server, for what only the host can do.

A CondaTainer kernel runs inside its container, where there is no Apptainer and no image
directory to write to, so creating an env (``%condatainer create``) asks the server that
started the kernel, through its REST API (``/condatainer/api``) and with the server's own
token. The server writes ``jpserver-<pid>.json`` (its URL and token) into the Jupyter runtime
directory, which holds the kernel's connection file and is bound into the instance at the same
path; ``JPY_PARENT_PID`` names that server. Runs with the standard library only.
"""

from __future__ import annotations

import glob
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable

TERMINAL_STATES = ("succeeded", "failed", "cancelled")


class ServerLinkError(RuntimeError):
    """No server to ask, or the server refused; the message says which."""


def runtime_dirs(connection_file: str) -> list[str]:
    """Where the host's Jupyter runtime directory shows in the container: the connection file's
    directory, and the parent of our runtime subdirectory (``$CONDATAINER_INFO``'s)."""
    dirs = [os.path.dirname(connection_file)]
    if os.environ.get("CONDATAINER_INFO"):
        dirs.append(os.path.dirname(os.path.dirname(os.environ["CONDATAINER_INFO"])))
    return list(dict.fromkeys(d for d in dirs if d))


def find_server(dirs: list[str], parent_pid: str | None) -> dict:
    """The server that started this kernel: its ``jpserver-<pid>.json``, else the newest one."""
    for directory in dirs:
        path = os.path.join(directory, f"jpserver-{parent_pid}.json")
        if parent_pid and os.path.isfile(path):
            return _read(path)
    candidates = sorted((p for d in dirs for p in glob.glob(os.path.join(d, "jpserver-*.json"))), key=os.path.getmtime)
    if not candidates:
        raise ServerLinkError(
            f"no Jupyter server found in {', '.join(dirs)}: creating an env needs the server that runs this "
            "kernel (JupyterLab, or `jupyter server`); use the CondaTainer panel there instead"
        )
    return _read(candidates[-1])


def _read(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as err:
        raise ServerLinkError(f"cannot read the server file {path}: {err}") from None


def call(server: dict, method: str, path: str, body: dict | None = None, timeout: float = 60) -> dict:
    """One REST call with the server's token; HTTP errors become :class:`ServerLinkError`."""
    url = server["url"].rstrip("/") + "/" + path.lstrip("/")
    request = urllib.request.Request(
        url,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"token {server.get('token', '')}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = response.read()
    except urllib.error.HTTPError as err:
        try:
            message = json.loads(err.read() or b"{}").get("message") or err.reason
        except ValueError:
            message = err.reason
        raise ServerLinkError(f"{method} {path}: {err.code} {message}") from None
    except OSError as err:
        raise ServerLinkError(f"cannot reach the Jupyter server at {server['url']}: {err}") from None
    return json.loads(payload) if payload else {}


def run_job(
    server: dict, method: str, path: str, body: dict, on_line: Callable[[str], None], poll: float = 0.3
) -> dict:
    """Submit a job and follow it to its end, passing each new log line on."""
    job = call(server, method, path, body)["job"]
    shown = 0
    while True:
        log = job.get("log", [])
        for line in log[shown:]:
            on_line(line)
        shown = len(log)
        if job["state"] in TERMINAL_STATES:
            return job
        time.sleep(poll)
        job = call(server, "GET", f"condatainer/api/jobs/{job['id']}")
