"""Ways to get a notebook's recorded stack back, for the user to pick with one click.

:func:`kernel_provider.envs.stackrecord.compare` says what differs from the stack a notebook ran
on; this module says what can be done about it. Each :class:`Remedy` is applied by the client
through routes that exist (kernel change, ``…/freeze``, ``…/rollback``):

- ``switch_kernel``: another kernelspec's stack is the recorded one exactly: the same images in
  the same order by identity (size, mtime, head hash; a name may differ, e.g. an old build kept
  under another name), an env by its name at the recorded revision. Also offered for the kernel
  of an earlier freeze of the recorded env revision.
- ``freeze``: the env moved on; its recorded revision becomes a read-only overlay and the freeze
  registers a kernel on it, which the client then switches to. Nothing changes for anyone else.
- ``rollback``: the env moved on; it gets the recorded revision's packages back (as a new
  revision). That changes the env for every notebook and user of it, so it is ``shared``: the
  client asks first and says so.

Deciding is pure (:func:`same_stack`, :func:`env_remedies`); :func:`remedies` gathers what they
need (the kernelspecs' images and identities, the env's history) and is blocking.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kernel_provider.envs import freeze, stackrecord
from kernel_provider.envs.operations import EnvOperations
from kernel_provider.host import stackimages
from kernel_provider.host.probes import ImageProbe
from kernel_provider.kernel.kernelspecs import KernelspecStore, StackSpec, kernel_name
from kernel_provider.model.overlays import Catalog, Overlay, OverlayError, resolve
from kernel_provider.model.plan import order_overlays

FROZEN_VERSION = "1.0"


@dataclass(frozen=True)
class Remedy:
    """One way to get the recorded stack back: what the button says and what applying it takes."""

    action: str  # "switch_kernel", "freeze" or "rollback"
    label: str  # the button
    description: str  # what it does, in a sentence or two
    kernel: str = ""  # switch_kernel: the kernelspec; freeze: the one the freeze registers, switched to after
    env: str = ""  # freeze, rollback: the env
    revision: int | None = None  # freeze, rollback: the recorded revision
    name: str = ""  # freeze: the new overlay's name and version
    version: str = ""
    shared: bool = False  # it changes what other notebooks and users get: ask first


def _images(record: dict) -> list:
    """What identifies each image of a record in order: its identity, an env its name."""
    entries = [record.get("base_image") or {}, *(record.get("overlays") or [])]
    return [e.get("identity") or ("env", e.get("name")) for e in entries]


def same_stack(recorded: dict, candidate: dict) -> bool:
    """Whether ``candidate`` (a record of a stack now) is the recorded stack exactly."""
    if _images(recorded) != _images(candidate):
        return False
    return (recorded.get("env") or {}).get("revision") == (candidate.get("env") or {}).get("revision")


def frozen_overlay(env: str, revision: int) -> tuple[str, str]:
    """The name and version of the overlay a freeze of that revision makes (``bio-rev2``, ``1.0``):
    a name of its own, since a version of the env's name would shadow the env."""
    return f"{env.replace('/', '-')}-rev{revision}", FROZEN_VERSION


def env_remedies(env: str, recorded: int, current: int, freezable: bool, frozen_kernel: str) -> list[Remedy]:
    """What gets an env's recorded revision back once the env moved on to ``current``: the kernel of
    an earlier freeze of it (``frozen_kernel``), else a freeze when its overlay name is free
    (``freezable``); and a rollback."""
    found = []
    name, version = frozen_overlay(env, recorded)
    full = f"{name}/{version}"
    if frozen_kernel:
        found.append(
            Remedy(
                "switch_kernel",
                f"Switch to kernel {frozen_kernel}",
                f"Its overlay {full} holds revision {recorded} of {env}, frozen earlier.",
                kernel=frozen_kernel,
            )
        )
    elif freezable:
        found.append(
            Remedy(
                "freeze",
                f"Freeze revision {recorded} into an overlay and switch to a kernel on it",
                f"Makes the read-only overlay {full} with the packages of revision {recorded} of {env} and a "
                f"kernel on it, then switches this notebook to that kernel. {env} stays as it is.",
                kernel=kernel_name(freeze.kernel_label(full)),
                env=env,
                revision=recorded,
                name=name,
                version=version,
            )
        )
    found.append(
        Remedy(
            "rollback",
            f"Roll back the env to revision {recorded}",
            f"Installs the packages of revision {recorded} into {env} again (its revision {current + 1}). This "
            f"changes {env} for everyone: every notebook, kernel and user of it gets these packages.",
            env=env,
            revision=recorded,
            shared=True,
        )
    )
    return found


def kernel_remedy(kernel: str, spec: StackSpec) -> Remedy:
    """Switch to a kernel whose stack is the recorded one."""
    return Remedy(
        "switch_kernel",
        f"Switch to kernel {spec.display_name}",
        f"Its stack ({' + '.join(spec.overlays)}) has the very images this notebook ran on.",
        kernel=kernel,
    )


def remedies(operations: EnvOperations, recorded: dict, current_kernel: str = "") -> list[Remedy]:
    """The remedies for a recorded stack, the env's first (empty: none). The client asks once
    :func:`~kernel_provider.envs.stackrecord.compare` found a difference. ``current_kernel``: the
    notebook's kernelspec, never offered. Blocking: call it in a thread."""
    recorded = stackrecord.check(recorded)
    catalog = operations.catalog()
    specs = KernelspecStore().read_all()
    found = _env_remedies(operations, catalog, recorded, specs)
    offered = {current_kernel, *(r.kernel for r in found if r.action == "switch_kernel")}
    for kernel, spec in sorted(specs.items()):
        if (
            kernel not in offered
            and not spec.slurm
            and not spec.broken
            and _matches(operations, catalog, spec, recorded)
        ):
            found.append(kernel_remedy(kernel, spec))
    return [r for r in found if not (r.action == "switch_kernel" and r.kernel == current_kernel)]


def _env_remedies(operations: EnvOperations, catalog: Catalog, recorded: dict, specs: dict) -> list[Remedy]:
    """:func:`env_remedies` for the recorded env, once its history says it moved on; a freeze only
    when its overlay would be new, the kernel of an earlier freeze when that overlay holds the revision."""
    env = recorded.get("env") or {}
    overlay, revision = catalog.by_name.get(env.get("name", "")), env.get("revision")
    if overlay is None or overlay.kind != "img" or not isinstance(revision, int):
        return []
    revisions = stackrecord.env_revisions(operations, overlay)
    if not stackrecord.moved_on(revision, revisions) or not 0 <= revision < len(revisions):
        return []
    name, version = frozen_overlay(overlay.name, revision)
    full = f"{name}/{version}"
    frozen_kernel, freezable = "", False
    existing = catalog.by_name.get(full)
    if existing is not None:  # frozen earlier, if its description says so; else the name is taken
        target = freeze.FreezeTarget(overlay, full, Path(existing.path))
        kernel = kernel_name(freeze.kernel_label(full))
        if kernel in specs and ImageProbe().overlay_env(existing).whatis == freeze.whatis(target, revisions[revision]):
            frozen_kernel = kernel
    else:
        try:
            freeze.check_target(operations, overlay.name, name, version)
            freezable = True
        except (FileExistsError, ValueError, OverlayError):
            pass
    return env_remedies(overlay.name, revision, revisions[-1].number, freezable, frozen_kernel)


def _matches(operations: EnvOperations, catalog: Catalog, spec: StackSpec, recorded: dict) -> bool:
    """Whether a kernelspec's stack is the recorded one; its env's history is read only when its
    images are the recorded ones."""
    try:
        base = Overlay.from_path(spec.base_image) if spec.base_image else catalog.base_image()
        overlays = order_overlays([resolve(name, catalog) for name in spec.overlays])
        if base is None or len(overlays) != len(recorded.get("overlays") or []):
            return False  # not the recorded stack, known before any image is read
        candidate = {"version": stackimages.RECORD_VERSION, **stackimages.images(base, overlays)}
    except (OSError, OverlayError):
        return False
    if _images(candidate) != _images(recorded):
        return False
    env = overlays[-1] if overlays and overlays[-1].kind == "img" else None
    if env is not None:
        revisions = stackrecord.env_revisions(operations, env)
        candidate["env"] = {"name": env.name, "revision": revisions[-1].number if revisions else None}
    return same_stack(recorded, candidate)
