"""A package change's plan, read from micromamba's ``--dry-run --json``: what it would add,
remove, up- or downgrade, and download.

Standard library only: the ``%condatainer`` magic reads it inside the container, the server
(:mod:`kernel_provider.envs.preview`) on the host; both show the same plan.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

VERBS = ("install", "update", "remove")  # the changes that can be previewed

# Runs as: sh -c DRY_RUN_SCRIPT sh mm-VERB ARGS…   (inside the container)
# micromamba writes repodata into the first writable of its package caches ($CONDA_PKGS_DIRS),
# by default the env's own pkgs/: a throw-away one goes first, the ones a change would use stay
# behind it (looked in only, so the plan's download still leaves out what they hold).
DRY_RUN_SCRIPT = r"""
cache=$(mktemp -d "${TMPDIR:-/tmp}/condatainer-dry-run.XXXXXX") || exit 1
trap 'rm -rf "$cache"' EXIT
trap 'exit 130' INT TERM HUP
CONDA_PKGS_DIRS="$cache,${CONDA_PKGS_DIRS:-${CNT_CONDA_PREFIX:-/ext3/env}/pkgs}" "$@"
"""


class TransactionError(ValueError):
    """The solver's answer was not the JSON of a transaction."""


def dry_run_command(verb: str, args: Sequence[str]) -> list[str]:
    """``mm-VERB -y --dry-run --json ARGS…``: the solver's plan of a change, as JSON, changing nothing.

    One builder for both previews, so the magic's ``--dry-run`` and the server's show the same
    plan: the magic passes the words typed after the verb, the server its channels and specs.
    A preview must not change the env, not even the repodata cache in its ``pkgs/``, so the solver
    gets a temporary package cache of its own (:data:`DRY_RUN_SCRIPT`), removed when it ends.
    """
    if verb not in VERBS:
        raise ValueError(f"cannot preview {verb!r}; only {', '.join(VERBS)}")
    return ["sh", "-c", DRY_RUN_SCRIPT, "sh", f"mm-{verb}", "-y", "--dry-run", "--json", *args]


def _version_key(version: str) -> tuple:
    """An ordering of conda versions good enough to tell an upgrade from a downgrade.

    Numbers compare as numbers, letters below numbers (``1.0rc1`` < ``1.0`` < ``1.0.1``),
    ``dev`` below everything; conda's full rules (epochs, ``post``) are not needed for
    that word.
    """
    key = []
    for part in re.findall(r"\d+|[a-z]+", version.lower()):
        if part.isdigit():
            key.append((2, int(part), ""))
        else:
            key.append((0 if part == "dev" else 1, 0, part))
    return tuple(key) + ((1, 0, ""),)  # a release sorts above its own pre-releases


def _package(entry: dict) -> dict:
    return {
        "name": entry.get("name", ""),
        "version": str(entry.get("version", "")),
        "build": str(entry.get("build", entry.get("build_string", ""))),
        "channel": str(entry.get("channel", "")),
        "size": int(entry.get("size") or 0),
    }


def parse_transaction(text: str) -> dict:
    """The plan in micromamba's JSON (``actions``: FETCH, LINK, UNLINK).

    Returns ``added`` and ``removed`` packages, ``upgraded``/``downgraded``/``changed`` ones
    (each with ``from`` and ``to`` versions and builds), and ``download_bytes``/``download_count``
    of the packages not in the env's cache yet. An empty plan: nothing would change.
    """
    try:
        data = json.loads(text)
    except ValueError:
        raise TransactionError(f"the solver's answer is not JSON: {text.strip()[:200]!r}") from None
    if not isinstance(data, dict):
        raise TransactionError("the solver's answer is not a JSON object")
    actions = data.get("actions") or {}
    link = {e["name"]: _package(e) for e in actions.get("LINK", [])}
    unlink = {e["name"]: _package(e) for e in actions.get("UNLINK", [])}
    fetch = [_package(e) for e in actions.get("FETCH", [])]
    plan: dict = {
        "added": [link[n] for n in sorted(link.keys() - unlink.keys())],
        "removed": [unlink[n] for n in sorted(unlink.keys() - link.keys())],
        "upgraded": [],
        "downgraded": [],
        "changed": [],
        "download_bytes": sum(p["size"] for p in fetch),
        "download_count": len(fetch),
    }
    for name in sorted(link.keys() & unlink.keys()):
        old, new = unlink[name], link[name]
        older, newer = _version_key(old["version"]), _version_key(new["version"])
        kind = "upgraded" if newer > older else "downgraded" if newer < older else "changed"
        plan[kind].append(
            {
                "name": name,
                "from": f"{old['version']}-{old['build']}",
                "to": f"{new['version']}-{new['build']}",
                "channel": new["channel"],
                "size": new["size"],
            }
        )
    return plan


def is_empty(plan: dict) -> bool:
    """Whether the change would do nothing (everything asked for is there already)."""
    return not any(plan[k] for k in ("added", "removed", "upgraded", "downgraded", "changed"))


# What a change needs in the env, estimated: repodata gives each package's download size but not its
# unpacked size. micromamba keeps the download in the env's package cache (``/ext3/env/pkgs``, until
# ``mm-clean``), unpacks it there and hard-links the unpacked files into the env, so a change takes
# its download plus the unpacked size. Conda archives unpack to about twice their download: about as
# much for data that was compressed already, five times and more for text (headers, Python sources).
# So three times the download is close for most changes; it is up to a third too high for packages
# that do not compress, and can be half the truth for text-heavy ones. Every package also takes a few
# blocks however small it is (``info/``, its ``conda-meta`` record, each file's last block).
SPACE_PER_DOWNLOADED_BYTE = 3
SPACE_PER_PACKAGE = 64 * 1024


def space_needed(plan: dict) -> int:
    """Bytes the change is estimated to take in the env (see :data:`SPACE_PER_DOWNLOADED_BYTE`)."""
    return plan["download_bytes"] * SPACE_PER_DOWNLOADED_BYTE + plan["download_count"] * SPACE_PER_PACKAGE


SIZE_STEP_MIB = 64  # the smallest env


def suggested_size_mib(total_bytes: int, free_bytes: int, needed_bytes: int) -> int:
    """A size to grow an env to so the change fits with room to spare: double, or more when the
    change needs more than that. Rounded up to a multiple of 64 MiB, so it reads the same whether
    the size came from the superblock or from ``statfs`` (which leaves out the filesystem's own
    few percent)."""
    wanted = max(2 * total_bytes, total_bytes + 2 * (needed_bytes - free_bytes))
    step = SIZE_STEP_MIB * 1024 * 1024
    return -(-wanted // step) * SIZE_STEP_MIB


def space_refusal(
    plan: dict, *, verb: str, env: str, name: str, total_bytes: int, free_bytes: int, in_use: bool
) -> str:
    """Empty when the change fits in the env's ``free_bytes``; else a refusal whose first line says
    what would happen and what to do, and whose second says how rough the estimate is.

    ``env`` is the env's file (``demo.img``), ``name`` its catalog name (for the resize command);
    ``in_use``: a kernel has the env mounted, and an env in use cannot grow.
    """
    needed = space_needed(plan)
    if needed <= free_bytes:
        return ""
    size = suggested_size_mib(total_bytes, free_bytes, needed)
    grow = f"the CondaTainer panel's Disk section: Grow…, or jupyter condatainer env resize {name} --size {size}"
    advice = f"Shut down the kernels using it, grow it ({grow})" if in_use else f"Grow it ({grow})"
    return (
        f"{env} has {_bytes(free_bytes)} free; this {verb} needs about {_bytes(needed)}. {advice} and try again.\n"
        f"Nothing was changed. The need is estimated from the download ({_bytes(plan['download_bytes'])}, "
        f"{plan['download_count']} packages): {SPACE_PER_DOWNLOADED_BYTE} times it for the package cache and "
        f"the unpacked files, plus {SPACE_PER_PACKAGE // 1024} KiB a package. Packages unpack to between about "
        "one and five times their download, so the real need can be a third lower or twice as high."
    )


def _bytes(size: int) -> str:
    value, unit = float(size), "B"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            break
        value /= 1024
    return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"


def format_plan(plan: dict) -> list[str]:
    """The plan as lines for people, as the magic prints it."""
    if is_empty(plan):
        return ["Nothing to change: every requested package is installed already."]
    lines = []
    for package in plan["added"]:
        lines.append(f"  + {package['name']} {package['version']} ({package['build']}, {package['channel']})")
    for kind, sign in (("upgraded", "↑"), ("downgraded", "↓"), ("changed", "~")):
        for package in plan[kind]:
            lines.append(f"  {sign} {package['name']} {package['from']} → {package['to']}")
    for package in plan["removed"]:
        lines.append(f"  - {package['name']} {package['version']} ({package['build']})")
    counts = ", ".join(
        f"{len(plan[k])} {k}" for k in ("added", "upgraded", "downgraded", "changed", "removed") if plan[k]
    )
    download = (
        f"download {_bytes(plan['download_bytes'])} ({plan['download_count']} packages)"
        if plan["download_count"]
        else "nothing to download"
    )
    return [*lines, f"Plan: {counts}; {download}."]
