"""Which container runtime runs the stacks — Apptainer or SingularityCE — and in which mode.

Pure data and rules: the host layer (:mod:`kernel_provider.host.runtime_detect`) finds the
binary and reads its ``--version`` and configuration; the command builder and the launchers
take the :class:`Runtime` as data, so no code below the host layer asks which one it is.

The two runtimes share their command line (``exec``, ``instance start``, ``--overlay``) but
not their variables: Apptainer reads ``APPTAINER_*`` (and, deprecated, ``SINGULARITY_*``),
SingularityCE only ``SINGULARITY_*``. SingularityCE (4.x) also has an OCI mode (``--oci``, or
``oci mode = yes`` in its ``singularity.conf``): the container runs under runc with its own
network namespace and without instances.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

OCI_FLAG = "--oci"
NO_OCI_FLAG = "--no-oci"


@dataclass(frozen=True)
class Flavour:
    """What differs between the Apptainer-family runtimes that we use."""

    name: str  # shown to users: "Apptainer", "SingularityCE"
    env_prefix: str  # the runtime's own settings: <prefix>DROP_CAPS, <prefix>CONFIGDIR
    container_env_prefix: str  # variables passed into the container: <prefix>NAME=value
    has_oci_mode: bool  # ``--oci``: runc-based containers, no instances

    @property
    def drop_caps_variable(self) -> str:
        """The variable that tells the runtime which capabilities to drop (root without CAP_SYS_RESOURCE)."""
        return f"{self.env_prefix}DROP_CAPS"


APPTAINER = Flavour("Apptainer", "APPTAINER_", "APPTAINERENV_", has_oci_mode=False)
SINGULARITYCE = Flavour("SingularityCE", "SINGULARITY_", "SINGULARITYENV_", has_oci_mode=True)
_VERSION = re.compile(r"(\d+\.\d+(?:\.\d+)?)")


def flavour_from_name(binary: str) -> Flavour:
    """CondaTainer's rule (``IsSingularity``): a binary whose name says ``singularity`` is
    SingularityCE. Only a fallback: Apptainer ships a ``singularity`` link to itself, so the
    resolved name or, better, ``--version`` decides."""
    name = os.path.basename(os.path.realpath(binary) if binary else "").lower()
    return SINGULARITYCE if "singularity" in name else APPTAINER


def parse_version(output: str, binary: str = "") -> tuple[Flavour, str]:
    """The flavour and version from ``--version`` output.

    Apptainer says ``apptainer version 1.4.5``; SingularityCE ``singularity-ce version 4.5.1``
    (older Singularity: ``singularity version 3.8.7``, treated as SingularityCE: same variables).
    Unrecognised output falls back to the binary's name.
    """
    text = output.strip().lower()
    match = _VERSION.search(text)
    version = match.group(1) if match else ""
    if text.startswith("apptainer"):
        return APPTAINER, version
    if text.startswith("singularity"):
        return SINGULARITYCE, version
    return flavour_from_name(binary), version


def version_tuple(version: str) -> tuple[int, ...]:
    """``"4.5.1"`` → ``(4, 5, 1)``, for comparisons; ``()`` when unknown."""
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def oci_mode_from_config(text: str) -> bool:
    """Whether a ``singularity.conf`` sets ``oci mode = yes`` (SingularityCE's default for every run)."""
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip().lower() == "oci mode":
            return value.split("#")[0].strip().lower() == "yes"
    return False


@dataclass(frozen=True)
class Runtime:
    """The runtime in use: its binary, flavour, version, and whether it defaults to OCI mode."""

    binary: str
    flavour: Flavour
    version: str
    oci_by_default: bool = False  # SingularityCE's ``oci mode = yes``
    version_line: str = ""  # ``--version`` as the binary says it: ``singularity-ce version 4.5.1``

    @property
    def label(self) -> str:
        """``SingularityCE 4.5.1``: what ``jupyter condatainer`` and the panel show."""
        return f"{self.flavour.name} {self.version or '(version unknown)'}"

    def oci_mode(self, flags: Sequence[str] = (), option: bool = False) -> bool:
        """Whether a container of a stack with these flags runs in OCI mode: asked for by the
        provisioner option or ``--oci`` among the flags, or the runtime's default unless
        ``--no-oci`` is among them."""
        if NO_OCI_FLAG in flags:
            return False
        return option or OCI_FLAG in flags or self.oci_by_default

    def oci_problem(self) -> str | None:
        """Why OCI mode cannot be used with this runtime, or None when it can."""
        if not self.flavour.has_oci_mode:
            return (
                f"OCI mode needs SingularityCE 4 or newer, but {self.binary} is {self.label}; "
                "remove 'oci' from the kernel's options (and --oci from its flags), or set "
                "$CNT_APPTAINER_BIN to a SingularityCE binary"
            )
        if version_tuple(self.version) and version_tuple(self.version) < (4,):
            return f"OCI mode needs SingularityCE 4 or newer; {self.binary} is {self.label}"
        return None

    def as_dict(self, oci: bool | None = None) -> dict:
        """For ``jupyter condatainer --version``, the REST API and the panel."""
        oci = self.oci_by_default if oci is None else oci
        return {
            "runtime": self.flavour.name,
            "version": self.version,
            "binary": self.binary,
            "mode": "oci" if oci else "native",
            "instances": not oci,  # OCI mode has none: each kernel is its own container
            "oci_by_default": self.oci_by_default,
        }
