"""Kernelspecs for CondaTainer stacks: discovery (pure) and syncing to disk (separate).

The server's ``POST /api/kernels`` carries only a kernelspec name, so every stack a
user can pick is a kernelspec of its own: one per Python overlay (``python/3.11`` →
``condatainer-python-3.11``, "CondaTainer: python/3.11") and one per stack a user
registered (``jupyter condatainer kernelspecs add``). Specs we write carry
``metadata.condatainer.managed_by`` so a sync only ever touches its own.

A stack's kernel runs on the server's host (provisioner ``condatainer-provisioner``) or in a
SLURM job (``condatainer-slurm-provisioner``, kernel ``…-slurm``, "… (SLURM)").
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_core.paths import jupyter_data_dir

from kernel_provider.model.overlays import Catalog, OverlayError, resolve

MANAGED_BY = "jupyter-condatainer"
PROVISIONER = "condatainer-provisioner"
SLURM_PROVISIONER = "condatainer-slurm-provisioner"
# Before SLURM kernels had a provisioner of their own, `launcher: "slurm"` in the config of
# PROVISIONER chose them; a sync rewrites such kernelspecs once.
LEGACY_LAUNCHER_OPTION = "launcher"
PYTHON_PACKAGES = ("python",)
KERNEL_ARGV = ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"]

log = logging.getLogger(__name__)


def kernel_name(label: str) -> str:
    """``python/3.11`` → ``condatainer-python-3.11`` (lowercase, ``[a-z0-9._-]``)."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", label.lower()).strip("-.")
    return f"condatainer-{slug}"


def installed_kernel_names() -> set[str]:
    """Every kernelspec name Jupyter sees, in any kernels directory, lowercased as Jupyter compares
    them: a new kernelspec of one of these names would replace or hide that kernel."""
    return set(KernelSpecManager().find_kernel_specs())


@dataclass(frozen=True)
class StackSpec:
    """A kernel's stack as it will be written into ``kernel.json``."""

    label: str
    overlays: tuple[str, ...]
    base_image: str = ""
    writable: bool = False
    share_instance: bool | None = None  # None: the provisioner's default (shared)
    slurm: bool = False  # the kernel runs in a SLURM job (SLURM_PROVISIONER)
    origin: str = "auto"  # "auto": from the image directories; "custom": added by a user
    extra_config: dict = field(default_factory=dict)
    # Read from a kernelspec written with LEGACY_LAUNCHER_OPTION: the file needs rewriting.
    legacy_launcher: bool = field(default=False, compare=False)
    broken: str = ""  # why the stack cannot start now (an image is gone); kept so nothing vanishes

    @property
    def provisioner_name(self) -> str:
        """The provisioner a kernelspec of this stack names: the local one or the SLURM one."""
        return SLURM_PROVISIONER if self.slurm else PROVISIONER

    @property
    def name(self) -> str:
        """The kernelspec's directory name: ``condatainer-`` and the label, made safe."""
        # A SLURM kernel of a stack never replaces the local one of the same label.
        return kernel_name(self.label) + ("-slurm" if self.slurm else "")

    @property
    def display_name(self) -> str:
        """What the Launcher shows: ``CondaTainer: <label>``, ``(SLURM)`` for a SLURM kernel, and
        ``(broken)`` while the stack cannot start."""
        return f"CondaTainer: {self.label}" + (" (SLURM)" if self.slurm else "") + (" (broken)" if self.broken else "")

    def provisioner_config(self) -> dict:
        """The provisioner's options in the kernelspec: the stack and what was asked for with it."""
        config = {"overlays": list(self.overlays), **self.extra_config}
        if self.base_image:
            config["base_image"] = self.base_image
        if self.writable:
            config["writable"] = True
        if self.share_instance is not None:
            config["share_instance"] = self.share_instance
        return config

    def to_kernel_json(self) -> dict:
        """The ``kernel.json`` of this stack."""
        return {
            "argv": KERNEL_ARGV,
            "display_name": self.display_name,
            "language": "python",
            "interrupt_mode": "message",
            "metadata": {
                "kernel_provisioner": {"provisioner_name": self.provisioner_name, "config": self.provisioner_config()},
                "condatainer": {
                    "managed_by": MANAGED_BY,
                    "origin": self.origin,
                    "label": self.label,
                    "overlays": list(self.overlays),
                    "base_image": self.base_image,
                    "writable": self.writable,
                    **({"slurm": True} if self.slurm else {}),
                    **({"broken": self.broken} if self.broken else {}),
                },
            },
        }

    @classmethod
    def from_kernel_json(cls, data: dict) -> StackSpec | None:
        """The stack of one of our ``kernel.json`` files, or None for a kernelspec that is not ours."""
        meta = data.get("metadata", {}).get("condatainer", {})
        if meta.get("managed_by") != MANAGED_BY:
            return None
        provisioner = data["metadata"]["kernel_provisioner"]
        config = dict(provisioner.get("config", {}))
        legacy_launcher = config.pop(LEGACY_LAUNCHER_OPTION, None)
        known = {"overlays", "base_image", "writable", "share_instance"}
        return cls(
            label=meta.get("label", ""),
            overlays=tuple(config.get("overlays", [])),
            base_image=config.get("base_image", ""),
            writable=bool(config.get("writable", False)),
            share_instance=None if "share_instance" not in config else bool(config["share_instance"]),
            slurm=provisioner.get("provisioner_name") == SLURM_PROVISIONER or legacy_launcher == "slurm",
            origin=meta.get("origin", "auto"),
            extra_config={k: v for k, v in config.items() if k not in known},
            legacy_launcher=legacy_launcher is not None,
            broken=str(meta.get("broken", "")),
        )


def discover(catalog: Catalog) -> list[StackSpec]:
    """One kernel per Python overlay in the image directories (newest first per package)."""
    specs = []
    for package in PYTHON_PACKAGES:
        for overlay in reversed(catalog.versions_of(package)):
            if overlay.kind == "sqf":
                specs.append(StackSpec(label=overlay.name, overlays=(overlay.name,)))
    return specs


def missing_image(spec: StackSpec, catalog: Catalog) -> str:
    """Why the spec's stack cannot start now (an overlay or the base image is not found), or ""."""
    try:
        for overlay in spec.overlays:
            resolve(overlay, catalog)
    except OverlayError as err:
        return str(err).splitlines()[0]
    if spec.base_image:
        return "" if os.path.isfile(spec.base_image) else f"the base image {spec.base_image} is missing"
    return "" if catalog.base_image() is not None else "no base image found in the image directories"


class KernelspecStore:
    """Our kernelspecs in one Jupyter kernels directory (default: the user's)."""

    def __init__(self, kernels_dir: str | os.PathLike | None = None):
        self.kernels_dir = Path(kernels_dir or Path(jupyter_data_dir()) / "kernels")

    def read_all(self) -> dict[str, StackSpec]:
        """Our kernelspecs in the user's kernels directory, by name (others' are skipped)."""
        found = {}
        if not self.kernels_dir.is_dir():
            return found
        for path in sorted(self.kernels_dir.glob("*/kernel.json")):
            try:
                spec = StackSpec.from_kernel_json(json.loads(path.read_text()))
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if spec is not None:
                found[path.parent.name] = spec
        return found

    def write(self, spec: StackSpec) -> Path:
        """Write (or replace) a stack's kernelspec; the directory it went to."""
        directory = self.kernels_dir / spec.name
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / ".kernel.json.tmp"
        tmp.write_text(json.dumps(spec.to_kernel_json(), indent=1) + "\n")
        os.replace(tmp, directory / "kernel.json")
        return directory

    def remove(self, name: str) -> None:
        """Remove a kernelspec directory, but only one of ours."""
        if name in self.read_all():
            shutil.rmtree(self.kernels_dir / name, ignore_errors=True)

    def sync(self, catalog: Catalog, wanted: Iterable[StackSpec] | None = None) -> SyncResult:
        """Write the discovered specs, remove our stale discovered ones, keep every custom one.

        A user's kernelspec is never removed by a sync: one whose images are not found now (they
        were moved, or another ``CNT_EXTRA_IMAGE_DIRS`` is set) is marked broken — "(broken)" in
        the Launcher, the reason in its metadata — and unmarked once its images are back."""
        wanted = list(discover(catalog) if wanted is None else wanted)
        existing = self.read_all()
        result = SyncResult()
        for spec in wanted:
            if existing.get(spec.name) != spec:
                self.write(spec)
                result.written.append(spec.name)
            else:
                result.unchanged.append(spec.name)
        wanted_names = {spec.name for spec in wanted}
        for name, spec in existing.items():
            if name in wanted_names:
                continue
            if spec.origin == "custom":
                reason = missing_image(spec, catalog)
                if reason:
                    result.broken[name] = reason
                if reason != spec.broken:
                    self.write(replace(spec, broken=reason))
                    result.written.append(name)
                elif spec.legacy_launcher:
                    log.warning(
                        "CondaTainer kernelspec %s: provisioner option %r is deprecated; rewritten for %s",
                        name,
                        LEGACY_LAUNCHER_OPTION,
                        spec.provisioner_name,
                    )
                    self.write(spec)
                    result.written.append(name)
                else:
                    result.unchanged.append(name)
                continue
            self.remove(name)
            result.removed.append(name)
        return result


def broken_kernels() -> list[dict[str, str]]:
    """Our kernelspecs the last sync marked broken: kernelspec, display name and why."""
    return [
        {"kernelspec": name, "display_name": spec.display_name, "reason": spec.broken}
        for name, spec in sorted(KernelspecStore().read_all().items())
        if spec.broken
    ]


@dataclass
class SyncResult:
    """What a sync did: kernelspecs written and removed."""

    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    broken: dict[str, str] = field(default_factory=dict)  # kept custom kernelspecs that cannot start, and why


def custom_spec(
    overlays: Sequence[str],
    label: str = "",
    base_image: str = "",
    writable: bool = False,
    share: bool | None = None,
    slurm: bool = False,
    extra_config: dict | None = None,
) -> StackSpec:
    """A user-defined stack (``kernelspecs add``); the label defaults to the overlays.

    ``slurm``: the kernel runs in a SLURM job. ``extra_config``: more provisioner options,
    e.g. ``{"slurm_args": ["--partition=debug"]}``.
    """
    return StackSpec(
        label=label or " + ".join(overlays),
        overlays=tuple(overlays),
        base_image=base_image,
        writable=writable,
        share_instance=share,
        slurm=slurm,
        origin="custom",
        extra_config=dict(extra_config or {}),
    )
