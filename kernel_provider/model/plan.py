"""Turn overlay specs into a complete container plan, as CondaTainer's ``Setup`` does.

The plan is plain data — image, ordered overlays with mount modes, environment,
binds, flags — computed without side effects. Facts about the host and the images
(``unsquashfs`` listings, image owners, GPU devices) come in through a
:class:`HostFacts` so tests can state them and the edge modules can probe them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kernel_provider.incontainer.constants import ENV_PREFIX
from kernel_provider.model import binds as bind_rules
from kernel_provider.model.envfile import OverlayEnv, expand_references
from kernel_provider.model.overlays import Catalog, Overlay, OverlayError, resolve

# zsh's completion directories: CondaTainer sets FPATH so that zsh in the container completes.
ZSH_FPATH = ":".join(
    ["/usr/local/share/zsh/site-functions", "/usr/share/zsh/vendor-completions"]
    + [
        f"/usr/share/zsh/functions/{sub}"
        for sub in (
            "Calendar Chpwd Completion Completion/AIX Completion/BSD Completion/Base Completion/Cygwin "
            "Completion/Darwin Completion/Debian Completion/Linux Completion/Mandriva Completion/Redhat "
            "Completion/Solaris Completion/Unix Completion/X Completion/Zsh Completion/openSUSE Exceptions "
            "MIME Math Misc Newuser Prompts TCP VCS_Info VCS_Info/Backends Zftp Zle"
        ).split()
    ]
)
# CondaTainer's fixed variables, in its order (``commonEnvVars``).
FIXED_ENV = (
    ("LC_ALL", "C.UTF-8"),
    ("LANG", "C.UTF-8"),
    ("CURL_CA_BUNDLE", ""),
    ("SSL_CERT_FILE", ""),
    ("FPATH", ZSH_FPATH),
)
GPU_DEVICES = (("/dev/nvidiactl", "--nv"), ("/dev/kfd", "--rocm"))


class BaseImageNotFoundError(OverlayError):
    """No ``<distro>--base_image.sif`` where CondaTainer would look."""


class HostFacts(Protocol):
    """What the planner needs to know about images and the host."""

    def overlay_env(self, overlay: Overlay) -> OverlayEnv:
        """The variables and notes the overlay's build script and sidecar give a container."""

    def has_bin(self, overlay: Overlay) -> bool:
        """Whether the overlay has a ``bin/`` to put on PATH."""

    def image_owner(self, overlay: Overlay) -> int | None:
        """The uid owning an ``.img``'s upper layer (None when unknown): decides ``--fakeroot``."""

    def device_exists(self, path: str) -> bool:
        """Whether a GPU device node is present, so the container gets ``--nv`` or ``--rocm``."""


@dataclass(frozen=True)
class Diagnostic:
    """Something the planner noticed for the user: a sidecar warning, a variable set twice, fakeroot turned on."""

    level: str
    message: str


@dataclass(frozen=True)
class ContainerPlan:
    """Everything needed to start the container; see :mod:`kernel_provider.model.command`."""

    base_image: Overlay
    overlays: tuple[Overlay, ...]
    writable: bool
    env: tuple[tuple[str, str], ...]
    notes: Mapping[str, str]
    binds: tuple[str, ...]
    flags: tuple[str, ...]
    fakeroot: bool
    diagnostics: tuple[Diagnostic, ...] = field(default=())

    @property
    def env_image(self) -> Overlay | None:
        """The writable-env ``.img`` (always last), if any."""
        return self.overlays[-1] if self.overlays and self.overlays[-1].kind == "img" else None

    @property
    def overlay_args(self) -> list[str]:
        """The ``--overlay`` values in mount order, each with its ``:ro``/``:rw``."""
        return [overlay.mount_arg(self.writable) for overlay in self.overlays]

    @property
    def env_dict(self) -> dict[str, str]:
        """The container environment for lookups (later entries win, as in the container)."""
        return dict(self.env)


def order_overlays(overlays: Sequence[Overlay]) -> tuple[Overlay, ...]:
    """At most one ``.img``, and it goes last (it becomes the overlay upper layer)."""
    images = [o for o in overlays if o.kind == "img"]
    if len(images) > 1:
        listed = ", ".join(os.path.basename(o.path) for o in images)
        raise OverlayError(f"only one .img overlay is allowed, found {len(images)}: {listed}")
    if any(o.kind == "sif" for o in overlays):
        raise OverlayError("a .sif is a base image, not an overlay: pass it as the base image")
    return tuple([o for o in overlays if o.kind != "img"] + images)


def path_env(overlays: Sequence[Overlay], facts: HostFacts) -> str:
    """PATH with the last overlay's ``bin`` first, ``/ext3/env/bin`` for an ``.img``."""
    entries = ["$PATH"]  # Apptainer expands it to the base image's PATH
    for overlay in overlays:
        if overlay.is_data:
            continue
        if overlay.kind == "img":
            entries.insert(0, f"{ENV_PREFIX}/bin")
        elif facts.has_bin(overlay):
            entries.insert(0, f"{overlay.app_root}/bin")
    return ":".join(entries)


def _overlay_variables(
    overlays: Sequence[Overlay], facts: HostFacts
) -> tuple[dict[str, str], dict[str, str], list[Diagnostic]]:
    variables: dict[str, str] = {}
    notes: dict[str, str] = {}
    diagnostics = []
    for overlay in overlays:
        meta = facts.overlay_env(overlay)
        diagnostics += [Diagnostic("warning", warning) for warning in meta.warnings]
        for key, value in meta.variables.items():
            if key in variables:
                diagnostics.append(
                    Diagnostic("info", f"{key} is set by several overlays; using the value from {overlay.name}")
                )
            variables[key] = value
        notes.update(meta.notes)
    return variables, notes, diagnostics


def build_env(
    overlays: Sequence[Overlay],
    writable: bool,
    facts: HostFacts,
    environ: Mapping[str, str],
    user_env: Mapping[str, str] = {},
) -> tuple[list[tuple[str, str]], dict[str, str], list[Diagnostic]]:
    """The container environment in CondaTainer's order, its notes and diagnostics."""
    variables, notes, diagnostics = _overlay_variables(overlays, facts)
    variables = expand_references(variables)
    env = sorted(variables.items())
    try:
        layer = max(int(environ.get("IN_CONDATAINER", "0")), 0) + 1
    except ValueError:
        layer = 1
    prompt = "CNT" if layer == 1 else f"CNT_{layer}"
    env += [
        ("PATH", path_env(overlays, facts)),
        ("PS1", f"{prompt} \\[\\e[0;34m\\]\\w\\[\\e[0m\\]> "),
        ("IN_CONDATAINER", str(layer)),
        *FIXED_ENV,
    ]
    shown_notes = {key: notes.get(key) or value for key, value in variables.items()}
    if overlays and overlays[-1].kind == "img":
        env += [
            ("MAMBA_ROOT_PREFIX", ENV_PREFIX),
            ("CONDA_PREFIX", ENV_PREFIX),
            ("CONDA_DEFINE_ENV", "env"),
            ("RETICULATE_PYTHON", f"{ENV_PREFIX}/bin/python"),
        ]
        if writable:
            env.append(("CNT_CONDA_PREFIX", ENV_PREFIX))
            shown_notes["CNT_CONDA_PREFIX"] = ENV_PREFIX
    env += list(user_env.items())
    return env, shown_notes, diagnostics


def _gpu_flags(facts: HostFacts) -> list[str]:
    return [flag for device, flag in GPU_DEVICES if facts.device_exists(device)]


def needs_fakeroot(env_image: Overlay | None, writable: bool, facts: HostFacts, uid: int) -> Diagnostic | None:
    """CondaTainer's rule: a writable ``.img`` owned by someone else needs ``--fakeroot`` (not for root:
    root writes any image, and Apptainer refuses ``--fakeroot`` for root without a subuid range)."""
    if env_image is None or not writable or uid == 0:
        return None
    owner = facts.image_owner(env_image)
    if owner is None or owner == uid:
        return None
    whose = "root" if owner == 0 else f"uid {owner}"
    return Diagnostic(
        "note", f"{os.path.basename(env_image.path)} belongs to {whose}: --fakeroot enabled automatically"
    )


@dataclass(frozen=True)
class StackRequest:
    """A user's choice of stack: what a kernelspec or a CLI call asks for."""

    overlays: Sequence[str] = ()
    base_image: str = ""
    writable: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    binds: Sequence[str] = ()
    flags: Sequence[str] = ()
    fakeroot: bool = False


def plan_container(
    request: StackRequest,
    catalog: Catalog,
    facts: HostFacts,
    *,
    environ: Mapping[str, str],
    cwd: str,
    uid: int,
    extra_binds: Iterable[str] = (),
) -> ContainerPlan:
    """Resolve and validate a stack request into a :class:`ContainerPlan`."""
    base: Overlay | None
    if request.base_image:
        base = _resolve_base_image(request.base_image, cwd)
    else:
        base = catalog.base_image()
        if base is None:
            raise BaseImageNotFoundError(
                f"base image {catalog.distro}--base_image.sif not found in "
                f"{', '.join(catalog.dirs) or '(no image directories)'}. Build or download it "
                "(`condatainer base`, or scripts/build-images.sh here), or set the kernel's base_image."
            )
    overlays = order_overlays([resolve(spec, catalog, cwd) for spec in request.overlays if spec.strip()])
    env, notes, diagnostics = build_env(overlays, request.writable, facts, environ, request.env)
    wanted_binds = bind_rules.default_binds(environ, cwd, catalog.dirs) + list(extra_binds) + list(request.binds)
    env_image = overlays[-1] if overlays and overlays[-1].kind == "img" else None
    fakeroot_note = None if request.fakeroot else needs_fakeroot(env_image, request.writable, facts, uid)
    if fakeroot_note:
        diagnostics.append(fakeroot_note)
    return ContainerPlan(
        base_image=base,
        overlays=overlays,
        writable=request.writable,
        env=tuple(env),
        notes=notes,
        binds=tuple(bind_rules.dedupe_binds(wanted_binds)),
        flags=tuple(_gpu_flags(facts) + list(request.flags)),
        fakeroot=request.fakeroot or fakeroot_note is not None,
        diagnostics=tuple(diagnostics),
    )


def _resolve_base_image(spec: str, cwd: str) -> Overlay:
    path = os.path.join(cwd, os.path.expanduser(spec))
    if not os.path.isfile(path):
        raise BaseImageNotFoundError(f"base image {os.path.abspath(path)} not found")
    base = Overlay.from_path(path)
    if base.kind != "sif":
        raise OverlayError(f"base image must be a .sif file, got {spec}")
    return base
