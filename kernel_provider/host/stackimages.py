"""The images of a kernel's stack, as the record a notebook keeps of the stack it ran on.

Each image in mount order with a cheap content identity: size, mtime and a hash of the file's
first 64 KiB (a SquashFS superblock and its first tables, a SIF's header with its build id), so
a rebuilt image with the same name is told apart without reading gigabytes. The writable env is
named only: its bytes change on every mount, so it is recorded by its history revision, which
whoever can read the env adds (the kernel itself: :mod:`kernel_provider.incontainer.stackinfo`;
the server: :mod:`kernel_provider.envs.stackrecord`).

Here, below the provisioners, because a kernel's provisioner makes this part of the record as the
kernel starts.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

from kernel_provider.model.overlays import Overlay
from kernel_provider.model.plan import ContainerPlan

RECORD_VERSION = 1
HEAD_BYTES = 64 * 1024


def identity(path: str) -> dict:
    """Size, mtime and the hash of the first 64 KiB of an image. Blocking (reads the file's head)."""
    stat = os.stat(path)
    with open(path, "rb") as handle:
        head = hashlib.sha256(handle.read(HEAD_BYTES)).hexdigest()[:16]
    return {"size": stat.st_size, "mtime": int(stat.st_mtime), "head": head}


def _image(overlay: Overlay) -> dict:
    entry: dict = {"name": overlay.name, "kind": overlay.kind}
    if overlay.kind != "img":
        entry["identity"] = identity(overlay.path)
    return entry


def images(base_image: Overlay, overlays: Sequence[Overlay]) -> dict:
    """The images of a stack in mount order, each with its identity (an env by its name only).
    Blocking (reads each image's head)."""
    return {"base_image": _image(base_image), "overlays": [_image(o) for o in overlays]}


def plan_record(plan: ContainerPlan) -> dict:
    """The record of a kernel's stack (its instance's plan), its env's revision not yet known
    (None). Blocking (reads each image's head): about 0.1 ms for a base image and two overlays."""
    data: dict = {"version": RECORD_VERSION, **images(plan.base_image, plan.overlays), "writable": plan.writable}
    if plan.env_image is not None:
        data["env"] = {"name": plan.env_image.name, "revision": None}
    return data
