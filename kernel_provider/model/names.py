"""CondaTainer's overlay naming rules.

``python/3.11``, ``python=3.11``, ``python@3.11`` and ``python--3.11`` all name the
file ``python--3.11.sqf``. Versions sort "naturally" (``3.10`` > ``3.9``), exactly as
CondaTainer's ``SortVersionsDescending`` does, so a bare name picks the same newest
version the CLI would.
"""

from __future__ import annotations

import functools
import re

OVERLAY_SUFFIXES = (".sqf", ".img")
IMAGE_SUFFIXES = (".sif", *OVERLAY_SUFFIXES)
MOUNT_MODES = (":ro", ":rw")

# A normalised name: path segments of safe characters. No "..", no shell syntax.
_SEGMENT = r"[A-Za-z0-9_+][A-Za-z0-9._+-]*"
_NAME_RE = re.compile(rf"^{_SEGMENT}(/{_SEGMENT})*$")
_CONSTRAINT_OPS = (">=", ">")


class InvalidNameError(ValueError):
    """A user-supplied overlay name that CondaTainer could never resolve."""


def split_constraint(raw: str) -> tuple[str, str, str]:
    """``samtools/1.21>=1.16`` → ``("samtools/1.21", ">=", "1.16")``."""
    for op in _CONSTRAINT_OPS:
        before, sep, after = raw.partition(op)
        if sep:
            return before, op, after
    return raw, "", ""


def normalize(spec: str) -> str:
    """Normalise the ``= @ --`` delimiters to ``/`` and validate the result.

    A version constraint suffix is not part of the name; use
    :func:`split_constraint` first when one is allowed.
    """
    name = spec.strip()
    for delimiter in ("--", "=", "@"):
        name = name.replace(delimiter, "/")
    if not _NAME_RE.match(name) or ".." in name.split("/"):
        raise InvalidNameError(
            f"invalid overlay name {spec!r}: use name/version with letters, digits, '.', '_', '+', '-'"
        )
    return name


def name_from_filename(filename: str) -> str:
    """``python--3.11.sqf`` → ``python/3.11`` (``env.img`` → ``env``)."""
    stem = filename
    for suffix in IMAGE_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return stem.replace("--", "/")


def filename_for(name: str, suffix: str = ".sqf") -> str:
    """``python/3.11`` → ``python--3.11.sqf``."""
    return name.replace("/", "--") + suffix


def split_name_version(name: str) -> tuple[str, str]:
    """``python/3.11`` → ``("python", "3.11")``; a bare name has no version."""
    head, sep, tail = name.rpartition("/")
    return (head, tail) if sep else (name, "")


def is_data_overlay(name: str) -> bool:
    """Data overlays (``genome/hg38/star``) carry data only: nothing on PATH."""
    return name.count("/") > 1


def _segments(version: str) -> list[str]:
    return [s for s in re.split(r"[.\-_]", version) if s]


def _numeric_prefix(segment: str) -> tuple[int, str] | None:
    match = re.match(r"(\d+)(.*)", segment)
    return (int(match.group(1)), match.group(2)) if match else None


def _natural_cmp(a: str, b: str) -> int:
    """CondaTainer's ``naturalVersionGreater`` as a three-way comparison."""
    seg_a, seg_b = _segments(a), _segments(b)
    for x, y in zip(seg_a, seg_b):
        nx, ny = _numeric_prefix(x), _numeric_prefix(y)
        if nx and ny:
            if nx != ny:
                return 1 if nx > ny else -1
        elif x != y:
            return 1 if x > y else -1
    return (len(seg_a) > len(seg_b)) - (len(seg_a) < len(seg_b))


version_key = functools.cmp_to_key(_natural_cmp)
"""Sort key giving CondaTainer's natural version order (ascending)."""


def compare_versions(a: str, b: str) -> int:
    """Numeric, component-wise comparison used for ``>=`` constraints (1.16 == 1.16.0)."""

    def parts(v: str) -> list[int]:
        out = []
        for piece in v.split("."):
            if not piece.isdigit():
                break
            out.append(int(piece))
        return out

    pa, pb = parts(a), parts(b)
    width = max(len(pa), len(pb))
    pa += [0] * (width - len(pa))
    pb += [0] * (width - len(pb))
    return (pa > pb) - (pa < pb)


def satisfies(version: str, op: str, minimum: str, preferred: str = "") -> bool:
    """Does ``version`` meet ``op minimum`` without exceeding ``preferred``?"""
    cmp = compare_versions(version, minimum)
    if not ((op == ">=" and cmp >= 0) or (op == ">" and cmp > 0)):
        return False
    return not preferred or compare_versions(version, preferred) <= 0
