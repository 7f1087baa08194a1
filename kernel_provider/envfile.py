"""Overlay environment metadata: ``.env`` sidecars and embedded build scripts.

A ``.sqf`` may embed its build script at ``cnt/<name>/<version>/.cnt-build-script``
with ``#ENV:KEY=VALUE`` lines (each optionally followed by ``#ENVNOTE:``); a sidecar
``<overlay file>.env`` next to the image shadows it with ``KEY=VALUE``,
``#ENVNOTE:KEY=note`` and ``#WHATIS:text`` lines. ``$app_root`` stands for the
overlay's mount point. References between overlay variables
(``HELLO_GREETING=hi from $HELLO_HOME``) are expanded here, because Apptainer
evaluates its ``--env`` values in no fixed order; the rest (``$PATH``, ``$HOME``) is
left for Apptainer to expand inside the container.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

BUILD_SCRIPT_NAME = ".cnt-build-script"
_REFERENCE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


@dataclass(frozen=True)
class OverlayEnv:
    """What one overlay contributes: a description, variables and notes about them."""

    whatis: str = ""
    variables: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def shadowed_by(self, other: OverlayEnv) -> OverlayEnv:
        """Merge ``other`` (a sidecar) over this (the embedded script)."""
        return OverlayEnv(
            whatis=other.whatis or self.whatis,
            variables={**self.variables, **other.variables},
            notes={**self.notes, **other.notes},
        )


def _strip_inline_comment(text: str) -> str:
    index = text.find(" #")
    return text[:index] if index >= 0 else text


def _split_pair(text: str) -> tuple[str, str]:
    key, _, value = text.partition("=")
    return key.strip(), value.strip()


def parse_sidecar(text: str, app_root: str) -> OverlayEnv:
    """Parse a ``<overlay>.env`` sidecar."""
    whatis, variables, notes = "", {}, {}
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#WHATIS:"):
            whatis = line[len("#WHATIS:") :].strip()
        elif line.startswith("#ENVNOTE:"):
            key, note = _split_pair(line[len("#ENVNOTE:") :])
            if key:
                notes[key] = note
        elif line and not line.startswith("#") and "=" in line:
            key, value = _split_pair(line)
            if key:
                variables[key] = value.replace("$app_root", app_root)
    return OverlayEnv(whatis, variables, notes)


def parse_build_script(text: str, app_root: str) -> OverlayEnv:
    """Parse the ``#WHATIS:``/``#ENV:``/``#ENVNOTE:`` headers of an embedded build script."""
    whatis, variables, notes = "", {}, {}
    lines = [line.strip() for line in text.splitlines()]
    for index, line in enumerate(lines):
        if line.startswith("#WHATIS:"):
            whatis = line[len("#WHATIS:") :].strip()
            continue
        if not line.startswith("#ENV:"):
            continue
        content = _strip_inline_comment(line[len("#ENV:") :])
        if "=" not in content:
            continue
        key, value = _split_pair(content)
        if not key:
            continue
        variables[key] = value.replace("$app_root", app_root)
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if following.startswith("#ENVNOTE:"):
            notes[key] = following[len("#ENVNOTE:") :].strip()
    return OverlayEnv(whatis, variables, notes)



def expand_references(variables: dict[str, str]) -> dict[str, str]:
    """Substitute ``$NAME``/``${NAME}`` where NAME is one of ``variables`` (not itself)."""
    expanded = dict(variables)
    for _ in range(len(expanded)):
        changed = False
        for key, value in expanded.items():
            def substitute(match: re.Match) -> str:
                name = match.group(1) or match.group(2)
                return expanded[name] if name in expanded and name != key else match.group(0)

            new = _REFERENCE.sub(substitute, value)
            changed |= new != value
            expanded[key] = new
        if not changed:
            break
    return expanded
