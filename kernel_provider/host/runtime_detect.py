"""Find the container runtime as CondaTainer does, and tell Apptainer from SingularityCE.

CondaTainer takes ``$CNT_APPTAINER_BIN`` (its ``apptainer_bin`` setting), else ``apptainer``,
else ``singularity`` on PATH; it tells them apart by the binary's name. We ask the binary
(``--version``): Apptainer ships a ``singularity`` link to itself, and a site may name either
anything. SingularityCE's ``oci mode`` comes from its ``singularity.conf``, found through
``buildcfg`` (its compiled-in path).

Detection runs the binary, so :func:`detect` is async and cached per binary (path and mtime).
:func:`flavour_for` answers at once for what must not wait (the runtime process's own
environment): the detected flavour when known, else CondaTainer's name rule.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil

from kernel_provider.model.flavour import Flavour, Runtime, flavour_from_name, oci_mode_from_config, parse_version

DETECT_TIMEOUT = 30.0
_detected: dict[tuple[str, int], Runtime] = {}


def default_binary() -> str:
    """CondaTainer's choice: ``$CNT_APPTAINER_BIN``, else ``apptainer``, else ``singularity`` on PATH."""
    return os.environ.get("CNT_APPTAINER_BIN", "") or shutil.which("apptainer") or shutil.which("singularity") or ""


def _identity(binary: str) -> tuple[str, int]:
    resolved = shutil.which(binary) or binary
    try:
        return os.path.realpath(resolved), os.stat(resolved).st_mtime_ns
    except OSError:
        return resolved, -1


def flavour_for(binary: str = "") -> Flavour:
    """The flavour of ``binary`` (default: CondaTainer's choice) without running it."""
    binary = binary or default_binary()
    known = _detected.get(_identity(binary))
    return known.flavour if known else flavour_from_name(binary)


async def _output(argv: list[str]) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), DETECT_TIMEOUT)
    except (asyncio.TimeoutError, asyncio.CancelledError):
        process.kill()
        await process.wait()
        raise
    return out.decode(errors="replace") if process.returncode == 0 else ""


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


async def _oci_by_default(binary: str) -> bool:
    """SingularityCE's ``oci mode`` setting, from the ``singularity.conf`` its ``buildcfg`` names."""
    conf = ""
    for line in (await _output([binary, "buildcfg"])).splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "SINGULARITY_CONF_FILE":
            conf = value.strip()
    return oci_mode_from_config(await asyncio.to_thread(_read, conf)) if conf else False


def loop_device_hint(binary: str, stderr: str) -> str:
    """Advice for a SingularityCE without setuid that an ordinary user runs: its native mode
    mounts ``.sqf`` overlays on loop devices, which only root may open; its OCI mode mounts
    them with FUSE."""
    if flavour_for(binary).has_oci_mode and "loop device" in stderr and os.getuid() != 0:
        return (
            "\nThis SingularityCE cannot mount overlay images for an ordinary user in its native mode "
            "(no setuid starter: overlays need loop devices). Use its OCI mode: the kernel's 'oci' "
            "option, --oci among its flags, or c.CondaTainerConfig.oci = True."
        )
    return ""


def _oci_from_environment(flavour: Flavour) -> bool:
    """``SINGULARITY_OCI=true``: SingularityCE reads its flags from its variables, so this is
    ``--oci`` on every command, as good as ``oci mode = yes``."""
    value = os.environ.get(f"{flavour.env_prefix}OCI", "")
    return flavour.has_oci_mode and value.strip().lower() in ("1", "t", "true", "yes")


async def detect(binary: str) -> Runtime:
    """The runtime ``binary`` is (asked once per binary and mtime; its variables every time)."""
    identity = _identity(binary)
    if identity not in _detected:
        resolved = shutil.which(binary) or binary
        said = (await _output([resolved, "--version"])).strip()
        flavour, version = parse_version(said, resolved)
        oci = await _oci_by_default(resolved) if flavour.has_oci_mode else False
        _detected[identity] = Runtime(resolved, flavour, version, oci, said)
    runtime = _detected[identity]
    if not runtime.oci_by_default and _oci_from_environment(runtime.flavour):
        return dataclasses.replace(runtime, oci_by_default=True)
    return runtime
