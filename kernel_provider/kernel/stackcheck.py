"""Checks on a stack before it becomes a kernelspec: images that are images, and a Python.

``kernelspecs add`` (and "Make kernel…" in the panel) would otherwise write a kernel that
fails only when a user starts it. The checks read the images' first bytes and listings
(:mod:`kernel_provider.host.probes`); only a stack whose overlays have no Python asks the
base image, with one ``apptainer exec``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from kernel_provider.host import probes
from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.host.process import run
from kernel_provider.host.python import no_python_message
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
    base = Overlay.from_path(base_image) if base_image else catalog.base_image()
    for image in [*([base] if base else []), *overlays]:
        if problem := probes.image_problem(image.path, image.kind):
            raise StackProblem(problem)
    found = [probes.has_python(o) if o.kind == "sqf" else probes.img_has_python(o) for o in overlays]
    if any(found) or None in found:  # one has python, or one cannot be read: let the start decide
        return
    if base is not None and base_has_python(config.require_apptainer(), base):
        return
    pythons = [o.name for o in catalog.versions_of("python")]
    available = f" Available: {', '.join(pythons)}." if pythons else ""
    raise StackProblem(no_python_message(", ".join(o.name for o in overlays)) + available)
