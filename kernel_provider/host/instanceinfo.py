"""The instance info file: what the kernel-side ``%condatainer`` magic reads about its stack."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.host.probes import ImageProbe
from kernel_provider.host.runtime import runtime_dir, write_private
from kernel_provider.incontainer.envlock import env_lock_path
from kernel_provider.model.plan import ContainerPlan

if TYPE_CHECKING:
    from kernel_provider.host.instances import Instance


def path(name: str) -> Path:
    """Where the kernel-side magic reads what instance ``name``'s stack is made of."""
    return runtime_dir() / f"{name}.json"


def overlay_notes(plan: ContainerPlan) -> dict[str, dict]:
    """What each overlay's build script and sidecar say about it, for the magic's ``info``.

    Reading a ``.sqf``'s build script runs ``unsquashfs``, so call this off the event loop.
    """
    return {o.name: asdict(ImageProbe().overlay_env(o)) for o in plan.overlays}


async def write(instance: Instance, config: CondaTainerConfig, apptainer_version: str) -> None:
    """Tell the kernel-side magic about a started instance: its stack, writable env and env lock, notes."""
    plan = instance.plan
    env_image = plan.env_image
    info = {
        "instance": instance.name,
        "apptainer_version": apptainer_version,
        "base_image": plan.base_image.path,
        "overlays": [
            {"name": o.name, "path": o.path, "kind": o.kind, "mount": o.mount_arg(plan.writable)} for o in plan.overlays
        ],
        "writable_env": env_image.path if env_image and plan.writable else None,
        "env_lock": env_lock_path(config.state_dir, env_image.path) if env_image and plan.writable else None,
        "notes": await asyncio.to_thread(overlay_notes, plan),
        "image_dirs": list(config.image_dirs),
        "shared": instance.shared,
        "oci": instance.oci,
    }
    write_private(path(instance.name), json.dumps(info, indent=1))
