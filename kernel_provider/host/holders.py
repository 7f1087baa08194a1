"""Who has an image open: the notebooks and kernels of our instances, or "another program".

"In use" alone does not tell a user what to close. Our instances' state files (any server of
this user) list each instance's images, its kernels and the notebooks they belong to, so an
image mounted by one of them is named by notebook; an image held only by a lock we cannot
attribute (CondaTainer's own flocks, a CondaTainer shell) is "another program".
"""

from __future__ import annotations

import os

from kernel_provider.host.state import InstanceRecord, Owner, StateStore
from kernel_provider.incontainer.diagnosis import ANOTHER_PROGRAM


def _images(record: InstanceRecord) -> set[str]:
    """The image paths an instance mounts (its overlay arguments end in ``:ro``/``:rw``)."""
    paths = {record.base_image}
    for arg in record.overlays:
        path, _, mode = arg.rpartition(":")
        paths.add(path if mode in ("ro", "rw") else arg)
    return {os.path.realpath(p) for p in paths if p}


def kernels_in_words(record: InstanceRecord) -> str:
    """An instance's users in words: its notebooks, and kernels without one by id."""
    named = [os.path.basename(record.notebooks[k]) for k in record.kernels if record.notebooks.get(k)]
    unnamed = [k[:8] for k in record.kernels if not record.notebooks.get(k)]
    parts = []
    if named:
        parts.append(("the notebook " if len(named) == 1 else "the notebooks ") + ", ".join(named))
    if unnamed:
        parts.append(("the kernel " if len(unnamed) == 1 else "the kernels ") + ", ".join(unnamed))
    return " and ".join(parts) or f"the instance {record.name}"


def describe(record: InstanceRecord, me: Owner | None = None) -> str:
    """An instance in words: its notebooks (or kernels), and which server runs it unless it is ``me``."""
    who = kernels_in_words(record)
    me = me or Owner.current()
    if record.owner.pid != me.pid or record.owner.host != me.host:
        who += f" (Jupyter server pid {record.owner.pid} on {record.owner.host})"
    return who


def holders(store: StateStore, paths: list[str], exclude: str = "") -> dict[str, str]:
    """Image path → who has it mounted, for those of ``paths`` an instance of ours mounts
    (``exclude``: the instance that is asking, e.g. one whose start failed)."""
    wanted = {os.path.realpath(p): p for p in paths}
    found: dict[str, list[str]] = {}
    for record in store.ours():
        if record.name == exclude:
            continue
        for image in _images(record) & set(wanted):
            found.setdefault(wanted[image], []).append(describe(record))
    return {path: "; ".join(who) for path, who in found.items()}


def holder(store: StateStore, path: str) -> str:
    """Who has ``path`` open: our notebooks and kernels, else :data:`ANOTHER_PROGRAM`."""
    return holders(store, [path]).get(path, ANOTHER_PROGRAM)
