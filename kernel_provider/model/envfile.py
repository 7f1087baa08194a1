"""Overlay environment metadata: ``.env`` sidecars and embedded build scripts.

A ``.sqf`` may embed its build script at ``cnt/<name>/<version>/.cnt-build-script``
with ``#ENV:KEY=VALUE`` lines (each optionally followed by ``#ENVNOTE:``); a sidecar
``<overlay file>.env`` next to the image shadows it with ``KEY=VALUE``,
``#ENVNOTE:KEY=note`` and ``#WHATIS:text`` lines. ``$app_root`` stands for the
overlay's mount point. References between overlay variables
(``HELLO_GREETING=hi from $HELLO_HOME``) are expanded here, because Apptainer
evaluates its ``--env`` values in no fixed order; the rest (``$PATH``, ``$HOME``) is
left for Apptainer to expand inside the container.

Every variable ends up in Apptainer's env script with its key unquoted, so a line whose key
is not a plain variable name (or whose value is too long to pass) is skipped with a warning
naming the file and line; the rest of the file still applies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from kernel_provider.model.validation import env_key_problem, env_value_problem

BUILD_SCRIPT_NAME = ".cnt-build-script"
REFERENCE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


@dataclass(frozen=True)
class OverlayEnv:
    """What one overlay contributes: a description, variables and notes about them, and
    warnings about the lines that were skipped."""

    whatis: str = ""
    variables: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def shadowed_by(self, other: OverlayEnv) -> OverlayEnv:
        """Merge ``other`` (a sidecar) over this (the embedded script)."""
        return OverlayEnv(
            whatis=other.whatis or self.whatis,
            variables={**self.variables, **other.variables},
            notes={**self.notes, **other.notes},
            warnings=self.warnings + other.warnings,
        )


def _strip_inline_comment(text: str) -> str:
    index = text.find(" #")
    return text[:index] if index >= 0 else text


def _split_pair(text: str) -> tuple[str, str]:
    key, _, value = text.partition("=")
    return key.strip(), value.strip()


def _skipped(source: str, number: int, key: str, value: str) -> str:
    """The warning for a variable line that cannot be passed on (empty when it can)."""
    problem = env_key_problem(key) or env_value_problem(value)
    return f"{source}:{number}: {problem}; this line is skipped" if problem else ""


def parse_sidecar(text: str, app_root: str, source: str = "sidecar") -> OverlayEnv:
    """Parse a ``<overlay>.env`` sidecar; ``source`` names it in warnings (its path)."""
    whatis, variables, notes, warnings = "", {}, {}, []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("#WHATIS:"):
            whatis = line[len("#WHATIS:") :].strip()
        elif line.startswith("#ENVNOTE:"):
            key, note = _split_pair(line[len("#ENVNOTE:") :])
            if key:
                notes[key] = note
        elif line and not line.startswith("#") and "=" in line:
            key, value = _split_pair(line)
            if not key:
                continue
            if warning := _skipped(source, number, key, value):
                warnings.append(warning)
                continue
            variables[key] = value.replace("$app_root", app_root)
    return OverlayEnv(whatis, variables, notes, tuple(warnings))


def parse_build_script(text: str, app_root: str, source: str = "build script") -> OverlayEnv:
    """Parse the ``#WHATIS:``/``#ENV:``/``#ENVNOTE:`` headers of an embedded build script;
    ``source`` names it in warnings."""
    whatis, variables, notes, warnings = "", {}, {}, []
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
        if warning := _skipped(source, index + 1, key, value):
            warnings.append(warning)
            continue
        variables[key] = value.replace("$app_root", app_root)
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if following.startswith("#ENVNOTE:"):
            notes[key] = following[len("#ENVNOTE:") :].strip()
    return OverlayEnv(whatis, variables, notes, tuple(warnings))


def expand_references(variables: dict[str, str]) -> dict[str, str]:
    """Substitute ``$NAME``/``${NAME}`` where NAME is one of ``variables`` (not itself)."""
    expanded = dict(variables)
    for _ in range(len(expanded)):
        changed = False
        for key, value in expanded.items():

            def substitute(match: re.Match, key: str = key) -> str:
                name = match.group(1) or match.group(2)
                return expanded[name] if name in expanded and name != key else match.group(0)

            new = REFERENCE.sub(substitute, value)
            changed |= new != value
            expanded[key] = new
        if not changed:
            break
    return expanded
