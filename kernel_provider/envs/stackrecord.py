"""The stack a notebook ran on, as a record for its metadata, and what differs from it now.

A record names the base image and every overlay in mount order, each with a cheap content
identity: size, mtime and a hash of the file's first 64 KiB (a SquashFS superblock and its
first tables, a SIF's header with its build id), so a rebuilt image with the same name is told
apart without reading gigabytes. The writable env is recorded by its history revision (its
bytes change on every mount); :func:`compare` says when it moved on and how to get back.
"""

from __future__ import annotations

import hashlib
import os

from kernel_provider.envs.envmeta import EnvUnreadableError
from kernel_provider.envs.operations import EnvOperations
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
    entry = {"name": overlay.name, "kind": overlay.kind}
    if overlay.kind != "img":
        entry["identity"] = identity(overlay.path)
    return entry


def record(operations: EnvOperations, plan: ContainerPlan) -> dict:
    """The record of a kernel's stack (its instance's plan). Blocking: call it in a thread."""
    data: dict = {
        "version": RECORD_VERSION,
        "base_image": _image(plan.base_image),
        "overlays": [_image(o) for o in plan.overlays],
        "writable": plan.writable,
    }
    env = plan.env_image
    if env is not None:
        try:
            revisions = operations.env_meta(env).revisions()
            data["env"] = {"name": env.name, "revision": revisions[-1].number if revisions else None}
        except EnvUnreadableError:
            data["env"] = {"name": env.name, "revision": None}
    return data


def compare(operations: EnvOperations, recorded: dict) -> list[str]:
    """What differs between a recorded stack and the images now, one sentence each (empty: the
    same). Blocking: call it in a thread."""
    if not isinstance(recorded, dict) or recorded.get("version") != RECORD_VERSION:
        raise ValueError("not a CondaTainer stack record (metadata 'condatainer' of version 1)")
    catalog = operations.catalog().by_name
    differences = []
    for entry in [recorded.get("base_image") or {}, *(recorded.get("overlays") or [])]:
        name = entry.get("name", "?")
        overlay = catalog.get(name)
        if overlay is None:
            differences.append(f"{name} is missing from the image directories")
            continue
        wanted = entry.get("identity")
        if wanted is None:
            continue  # the writable env: compared by revision below
        now = identity(overlay.path)
        if now != wanted:
            what = "rebuilt (other content)" if now["head"] != wanted["head"] else "changed (size or time)"
            differences.append(f"{name} was {what} since this notebook ran")
    env = recorded.get("env")
    if env and env.get("name") in catalog and env.get("revision") is not None:
        try:
            revisions = operations.env_meta(catalog[env["name"]]).revisions()
        except EnvUnreadableError:
            revisions = []
        current = revisions[-1].number if revisions else None
        if current is not None and current != env["revision"]:
            differences.append(
                f"the env {env['name']} moved on from revision {env['revision']} to {current}; to get the "
                f"recorded one back, roll back to revision {env['revision']} or freeze it as an overlay "
                "(the panel's History section)"
            )
    return differences
