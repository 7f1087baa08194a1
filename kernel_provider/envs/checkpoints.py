"""The steps of every env operation, named so a test can stop the work at each one.

An operation calls ``await checkpoint("install.copy")`` as it enters a step. Normally that
costs one lookup. With ``JCT_PAUSE_AT=install.copy`` and ``JCT_PAUSE_DIR`` in the server's
environment, reaching the step writes ``$JCT_PAUSE_DIR/install.copy`` and waits there (a
cancellable wait, which also ends when the test writes ``$JCT_PAUSE_DIR/install.copy.resume``),
so the crash-safety tests can cancel the job or SIGKILL the server at exactly that step and then
check that the env is either as before or finished. ``finish`` is the step after the commit.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

# operation → its steps, in order. The crash-safety matrix is built from this table.
STEPS: dict[str, tuple[str, ...]] = {
    "create": ("overlay", "solve", "clean", "commit", "finish"),
    "install": ("copy", "run", "commit", "finish"),
    "remove": ("copy", "run", "commit", "finish"),
    "update": ("copy", "run", "commit", "finish"),
    "rollback": ("copy", "run", "commit", "finish"),
    "freeze": ("read", "install", "pack", "commit", "finish"),
    "delete": ("unlink", "finish"),
    "resize": ("copy", "run", "commit", "finish"),
}


async def checkpoint(name: str) -> None:
    """Mark entering step ``name`` (``operation.step``); pause here when a test asks to."""
    operation, _, step = name.partition(".")
    if step not in STEPS.get(operation, ()):
        raise ValueError(f"unknown checkpoint {name!r}")
    if os.environ.get("JCT_PAUSE_AT") != name:
        return
    pause_dir = Path(os.environ.get("JCT_PAUSE_DIR", "."))
    (pause_dir / name).write_text(str(os.getpid()))
    resume = pause_dir / f"{name}.resume"
    while not resume.exists():  # noqa: ASYNC110 - polls a file another process writes
        await asyncio.sleep(0.05)
