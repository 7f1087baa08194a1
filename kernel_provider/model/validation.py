"""Checks of user input before anything runs: image names, package specs, channels, sizes, variables.

Pure: nothing here reads the disk or starts a process. What a check compares with (the image
catalog, the kernelspec names Jupyter sees) comes in as arguments, so the REST API (and the
magic's ``create``, which goes through it), the env operations and the freeze refuse the same
input with the same words. A refusal is a
:class:`ValueError` (or :class:`FileExistsError` when the name is taken) whose first line says
what is wrong and what to do instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from kernel_provider.kernel.kernelspecs import kernel_name
from kernel_provider.model import names
from kernel_provider.model.overlays import Catalog

MIN_SIZE_MB, MAX_SIZE_MB = 64, 1024 * 1024
MAX_SPEC_CHARS = 200
# Linux refuses one environment string over 128 KiB (MAX_ARG_STRLEN) when the kernel starts.
MAX_ENV_VALUE_BYTES = 64 * 1024

_SPEC_RE = re.compile(
    r"^(?:[A-Za-z0-9_.\-]+::)?[A-Za-z0-9_][A-Za-z0-9_.\-]*"  # [channel::]name
    r"(?:\s*(?:==|>=|<=|!=|~=|=|<|>)?\s*[A-Za-z0-9_.*+!,|<>=~\-]*)?"  # version constraint
    r"(?:\[[A-Za-z0-9_.*+!,|<>=~\-= ]*\])?$"  # [key=value] brackets
)
_CHANNEL_RE = re.compile(
    r"^(?:[A-Za-z0-9_][A-Za-z0-9_.\-]*(?:/[A-Za-z0-9_.\-]+)*|(?:file|https)://[A-Za-z0-9_.~:/\-]+)$"
)
_ENV_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+\-]{0,63}(?:/[A-Za-z0-9][A-Za-z0-9._+\-]{0,63})?$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SHELL_CHARS = set(";&`$(){}\\'\"\n\r\t")


class NameTakenError(FileExistsError):
    """A new image name that an existing image or kernelspec already answers to."""


# -- package specs and channels -----------------------------------------------------------


def validate_specs(specs: Sequence[str]) -> list[str]:
    """Conda match-specs, each one argv element of ``mm-install``: never an option, never shell syntax."""
    if isinstance(specs, str):
        raise ValueError(f"package specs must be a list, e.g. [{specs!r}], not one string")
    if not specs:
        raise ValueError("no package specs given: name at least one package, e.g. 'numpy'")
    return [_valid_spec(spec) for spec in specs]


def _valid_spec(spec: str) -> str:
    if not isinstance(spec, str):
        raise ValueError(f"package spec {spec!r} is not a string: write it in quotes, e.g. 'numpy>=1.26'")
    spec = spec.strip()
    if any(word.startswith("-") for word in spec.split()):
        raise ValueError(
            f"invalid package spec {spec!r}: options such as -c or --force are not accepted here, "
            "only package specs like 'numpy>=1.26' (give channels in the channels list)"
        )
    if len(spec) > MAX_SPEC_CHARS or set(spec) & _SHELL_CHARS or not _SPEC_RE.match(spec):
        raise ValueError(
            f"invalid package spec {spec!r}: use conda match-spec form, "
            "e.g. 'numpy', 'numpy>=1.26', 'conda-forge::numpy=1.26'"
        )
    return spec


def validate_channels(channels: Sequence[str]) -> list[str]:
    """Channel names or ``file://``/``https://`` URLs; plain ``http://`` can be tampered with on the way."""
    if isinstance(channels, str):
        raise ValueError(f"channels must be a list, e.g. [{channels!r}], not one string")
    cleaned = []
    for channel in channels:
        if not isinstance(channel, str):
            raise ValueError(f"channel {channel!r} is not a string: give a name like 'conda-forge' or a URL")
        channel = channel.strip()
        if not channel:
            continue
        if channel.startswith("http://"):
            raise ValueError(f"channel {channel!r} uses plain http://, which anyone on the way can alter: use https://")
        if not _CHANNEL_RE.match(channel) or ".." in channel.split("/"):
            raise ValueError(
                f"invalid channel {channel!r}: give a channel name (conda-forge) or a file:// or https:// URL"
            )
        cleaned.append(channel)
    return cleaned


def validate_size(size_mb, max_mb: int = MAX_SIZE_MB) -> int:
    """An env's size in MB: an integer between the minimum and the configured maximum."""
    if isinstance(size_mb, bool) or not isinstance(size_mb, int) or not MIN_SIZE_MB <= size_mb <= max_mb:
        raise ValueError(f"size_mb must be an integer between {MIN_SIZE_MB} and {max_mb} (the configured maximum)")
    return size_mb


# -- image names ----------------------------------------------------------------------------


def validate_env_name(name) -> str:
    """A new image's name, ``myenv`` or ``myenv/1.0`` (file ``myenv--1.0.img``), exactly as given.

    No coercion and no trimming: JSON ``null`` is not the name ``None`` and ``"x "`` is not ``x``.
    A name ending in ``.img``/``.sqf``/``.sif`` would be read as a file path by every kernelspec.
    """
    if not isinstance(name, str):
        raise ValueError(f"the name must be a string such as 'myenv' or 'myenv/1.0', not {name!r}")
    suffix = next((s for s in names.IMAGE_SUFFIXES if name.lower().endswith(s)), "")
    if suffix:
        raise ValueError(
            f"invalid name {name!r}: leave out the {suffix} ending (a name ending like an image file is "
            "taken for a file path); the file name gets its ending by itself"
        )
    if not _ENV_NAME_RE.match(name) or ".." in name or "--" in name:
        raise ValueError(f"invalid name {name!r}: letters, digits, '.', '_', '+', '-' (optionally name/version)")
    return name


def validate_lookup_name(name: str) -> str:
    """An existing image's name as sent. Lookups are exact: spaces around it are refused, not
    trimmed, so ``DELETE overlays/inj%20`` can never delete ``inj``."""
    if name != name.strip():
        raise names.InvalidNameError(f"invalid overlay name {name!r}: remove the spaces around it")
    return name


def check_new_name(name: str, kind: str, catalog: Catalog, kernelspecs: Iterable[str], kernel_label: str) -> None:
    """Refuse a new image name (already valid) that would collide with, shadow or be shadowed by another.

    CondaTainer resolves a bare name to the image of exactly that name, else to the newest
    ``name/<version>`` of any kind, and Jupyter compares kernelspec names lowercased. So the new
    name must be free, must not share its first part with another image — unless it is one more
    version of a family of versioned images of the same ``kind`` — and the kernelspec made for it
    (``kernel_label``) must not take over one that exists. Raises :class:`FileExistsError`.
    """
    if name in catalog.by_name:
        raise FileExistsError(f"an image named {name} already exists ({catalog.by_name[name].path}); pick another name")
    for existing, overlay in catalog.by_name.items():
        clash = _clash(name, kind, existing, overlay.kind)
        if clash:
            raise NameTakenError(f"cannot use the name {name}: {clash}")
    kernel = kernel_name(kernel_label)
    if kernel in {k.lower() for k in kernelspecs}:
        raise NameTakenError(
            f"cannot use the name {name}: its kernel would be {kernel}, and a kernelspec of that name exists; "
            f"pick another name, or remove that kernelspec first (jupyter kernelspec remove {kernel})"
        )


def _clash(new: str, kind: str, existing: str, existing_kind: str) -> str:
    """Why ``new`` cannot live next to the image ``existing`` (empty when it can)."""
    if new.lower() == existing.lower():
        return f"it differs only in case from the image {existing}; pick a name that differs in more than case"
    if kernel_name(new) == kernel_name(existing):
        return (
            f"it would get the same kernel name as the image {existing} ({kernel_name(new)}); "
            "pick a name that differs in letters or digits, not only in punctuation"
        )
    package, existing_package = new.split("/")[0], existing.split("/")[0]
    if package.lower() != existing_package.lower():
        return ""
    if package != existing_package:
        return (
            f"its first part differs only in case from the image {existing}; "
            "pick a name that no other image starts with"
        )
    if _is_versioned(new) and _is_versioned(existing) and kind == existing_kind:
        return ""  # one more version of the same family: the newest answers to the bare name, by design
    return (
        f"the image {existing} (.{existing_kind}) already answers to the bare name {package!r}, and a new "
        f".{kind} named {new} would take it over or be hidden by it; pick a name that no other image starts with"
    )


def _is_versioned(name: str) -> bool:
    return name.count("/") == 1


# -- container environment variables -----------------------------------------------------------


def env_key_problem(key: str) -> str:
    """Why ``key`` cannot be a variable in Apptainer's env script (empty when it can): the key goes
    in unquoted, so anything but a plain name breaks the script or runs as shell code."""
    if _ENV_KEY_RE.match(key):
        return ""
    return f"{key!r} is not a variable name (letters, digits and '_', not starting with a digit)"


def env_value_problem(value: str) -> str:
    """Why ``value`` is too long for a variable (empty when it is not)."""
    size = len(value.encode())
    if size <= MAX_ENV_VALUE_BYTES:
        return ""
    return f"its value is {size} bytes, over the {MAX_ENV_VALUE_BYTES // 1024} KiB limit for one variable"
