"""Checks on a stack before it becomes a kernelspec: images that are images, and a Python.

``kernelspecs add`` (and "Make kernel…" in the panel) would otherwise write a kernel that
fails only when a user starts it. The checks read the images' first bytes and listings
(:mod:`kernel_provider.host.probes`); only a stack whose overlays have no Python asks the
base image, with one ``apptainer exec``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from kernel_provider.host import probes
from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.host.process import run
from kernel_provider.host.python import no_python_message
from kernel_provider.kernel.kernelspecs import KernelspecStore, custom_spec, installed_kernel_names
from kernel_provider.model.overlays import Catalog, Overlay, resolve

BASE_PYTHON_TIMEOUT = 60.0


class StackProblem(ValueError):
    """A stack that would give a kernel that cannot start; the message says what to change."""


def base_has_python(apptainer: str, base: Overlay) -> bool:
    """Whether the base image's PATH has ``python`` (one short ``apptainer exec``)."""
    argv = [apptainer, "exec", "--cleanenv", base.path, "sh", "-c", "command -v python"]
    return asyncio.run(run(argv, BASE_PYTHON_TIMEOUT)).returncode == 0


def check_stack(config: CondaTainerConfig, catalog: Catalog, specs: Sequence[str], base_image: str = "") -> None:
    """Refuse a stack whose images are not images or that has no Python (:class:`StackProblem`).

    Blocking (reads images, may run a container): call it from a command or a thread.
    """
    overlays = [resolve(spec, catalog) for spec in specs]
    if not _has_python(config, catalog, overlays, base_image):
        pythons = [o.name for o in catalog.versions_of("python")]
        available = f" Available: {', '.join(pythons)}." if pythons else ""
        raise StackProblem(no_python_message(", ".join(o.name for o in overlays)) + available)


def _has_python(config: CondaTainerConfig, catalog: Catalog, overlays: list[Overlay], base_image: str) -> bool:
    """Whether the stack's PATH has ``python``; :class:`StackProblem` for a file that is no image."""
    base = Overlay.from_path(base_image) if base_image else catalog.base_image()
    for image in [*([base] if base else []), *overlays]:
        if problem := probes.image_problem(image.path, image.kind):
            raise StackProblem(problem)
    found = [probes.has_python(o) if o.kind == "sqf" else probes.img_has_python(o) for o in overlays]
    if any(found) or None in found:  # one has python, or one cannot be read: let the start decide
        return True
    return base is not None and base_has_python(config.require_apptainer(), base)


def with_python(config: CondaTainerConfig, catalog: Catalog, specs: Sequence[str]) -> tuple[list[str], str]:
    """The stack a kernel of ``specs`` mounts, and a note when it differs: the newest python
    overlay goes first when none of them (nor the base image) has Python; :class:`StackProblem`
    when there is no python overlay to add. Blocking: call it in a thread."""
    overlays = [resolve(spec, catalog) for spec in specs]
    if _has_python(config, catalog, overlays, ""):
        return list(specs), ""
    pythons = catalog.versions_of("python")
    if not pythons:
        raise StackProblem(no_python_message(", ".join(o.name for o in overlays)))
    return [pythons[-1].name, *specs], f"The kernel also mounts {pythons[-1].name}: the stack had no Python of its own."


@dataclass(frozen=True)
class MadeKernel:
    """What "Make kernel…" made: the kernelspec, its name in the Launcher, its whole stack."""

    kernelspec: str
    display_name: str
    overlays: list[str]
    note: str = ""  # e.g. that the env's kernel also mounts python/3.11


def make_kernel(config: CondaTainerConfig, catalog: Catalog, specs: Sequence[str], label: str = "") -> MadeKernel:
    """Check a stack and write its kernelspec (the panel's "Make kernel…", on ``kernelspecs add``'s code).

    A stack without Python gets the newest python overlay first, and says so. An env (``.img``)
    last in the stack is mounted writable, its kernels sharing one instance, so packages installed
    from a notebook stay in the env. Blocking: call it in a thread.
    """
    if not specs:
        raise StackProblem("choose at least one overlay or env")
    stack, note = with_python(config, catalog, specs)
    writable = resolve(specs[-1], catalog).kind == "img"
    spec = custom_spec(stack, label=label or " + ".join(specs), writable=writable, share=writable)
    if spec.name in installed_kernel_names():
        raise FileExistsError(f"a kernel named {spec.name} exists already; choose another name")
    KernelspecStore().write(spec)
    return MadeKernel(spec.name, spec.display_name, stack, note)
