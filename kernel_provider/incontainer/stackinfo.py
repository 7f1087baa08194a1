"""The kernel's stack record in its ``kernel_info_reply`` (``language_info.condatainer``).

The provisioner makes the record of the stack's images (:mod:`kernel_provider.host.stackimages`)
as the kernel starts, writes it to a file in the runtime directory and names that file in
``$CONDATAINER_STACK_RECORD``. Loaded as an IPython extension by the launcher (a kernel started by
exec and one forked by the fork server alike), this module adds the env's revision, read from the
env as this kernel mounts it (its ``conda-meta/history``: no other view of a mounted env is as
fresh, nor as cheap), and puts the record into the kernel's ``language_info``. Every client saves
that into the notebook's metadata, so a notebook run headless (nbclient, nbconvert, papermill)
records its stack as one run in JupyterLab does.

Standard library only: it runs inside the container with the stack's Python.
"""

from __future__ import annotations

import json
import os
import sys

from kernel_provider.incontainer.constants import ENV_PREFIX, STACK_RECORD_KEY, STACK_RECORD_VAR
from kernel_provider.incontainer.history import build_revisions


def read_record(path: str) -> dict | None:
    """The record in that file, or None (and a line on stderr, the kernel's log) when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError) as err:
        sys.stderr.write(f"jupyter-condatainer: no stack record for this kernel ({path}: {err})\n")
        return None
    return record if isinstance(record, dict) else None


def with_env_revision(record: dict, prefix: str = ENV_PREFIX) -> dict:
    """The record with its env's latest history revision (None when the env has no history)."""
    env = record.get("env")
    if not isinstance(env, dict):
        return record
    try:
        with open(os.path.join(prefix, "conda-meta", "history"), encoding="utf-8") as handle:
            revisions = build_revisions(handle.read())
    except OSError:
        revisions = []
    return {**record, "env": {**env, "revision": revisions[-1].number if revisions else None}}


def load_ipython_extension(ipython) -> None:
    """IPython's hook for ``--ext=kernel_provider.incontainer.stackinfo``, which the launcher passes.

    The variable is taken out of the environment: the kernel's child processes have no use for it.
    ``language_info`` is a class attribute of ipykernel's kernel; the kernel gets its own copy."""
    path = os.environ.pop(STACK_RECORD_VAR, "")
    kernel = getattr(ipython, "kernel", None)
    if not path or kernel is None:
        return
    record = read_record(path)
    if record is not None:
        kernel.language_info = {**kernel.language_info, STACK_RECORD_KEY: with_env_revision(record)}
