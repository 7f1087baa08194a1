"""A package change's plan, read from micromamba's ``--dry-run --json``: what it would add,
remove, up- or downgrade, and download.

Standard library only: the ``%condatainer`` magic reads it inside the container, the server
(:mod:`kernel_provider.envs.preview`) on the host; both show the same plan.
"""

from __future__ import annotations

import json
import re


class TransactionError(ValueError):
    """The solver's answer was not the JSON of a transaction."""


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


# Conda packages unpack to about twice their download, and the download stays in the env's package
# cache until it is cleaned: a change needs about three times what it downloads.
SPACE_PER_DOWNLOADED_BYTE = 3


def space_warning(plan: dict, free_bytes: int) -> str:
    """Empty when the change fits in ``free_bytes``; else what it needs, what there is, what to do."""
    needed = plan["download_bytes"] * SPACE_PER_DOWNLOADED_BYTE
    if needed <= free_bytes:
        return ""
    return (
        f"This change needs about {_bytes(needed)} and the env has {_bytes(free_bytes)} free: it would not fit. "
        "Grow the env first (the CondaTainer panel's Disk section, or condatainer overlay resize)."
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
