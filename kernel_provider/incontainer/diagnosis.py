"""What a failed tool's output means for the user: one plain first line, then the tool's lines.

Apptainer, the micromamba wrappers and the kernel start fail with INFO/FATAL lines written for
their developers ("while loading overlay images: failed to open overlay image …: image format
not recognized"). :func:`diagnose` reads such output and says, in one line, what happened and
what to do; :func:`explain` puts that line above the tool's own lines, which stay as detail.
Pure and stdlib-only (it runs in the container too, for the ``%condatainer`` magic): the caller
passes what it knows (:class:`Context`), nothing here touches the host.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

DETAIL_LINES = 15  # the tool's last lines kept under the first line


@dataclass(frozen=True)
class Context:
    """What the caller knows about the failed operation, to name things in the first line."""

    action: str = ""  # what failed, e.g. "The kernel 'CondaTainer: bio' could not start"
    holders: Mapping[str, str] = field(default_factory=dict)  # image path → who has it open
    user: str = ""  # the login name (for /etc/subuid advice)


@dataclass(frozen=True)
class Diagnosis:
    """The first line of an error: what happened, and what to do about it."""

    headline: str
    hint: str

    @property
    def line(self) -> str:
        """Headline and hint as one line: what every client shows first."""
        return f"{self.headline}. {self.hint}".replace("..", ".")


@dataclass(frozen=True)
class Rule:
    """Output that matches ``pattern`` means ``headline``; ``hint`` says what to do. Both may name
    ``{image}`` (the base name of the pattern's ``path``), ``{holder}`` (who has that image open,
    from :attr:`Context.holders`), ``{package}`` and ``{user}``."""

    pattern: re.Pattern
    headline: str
    hint: str

    def explain(self, match: re.Match, context: Context) -> Diagnosis:
        """The rule's words for one match, with the names filled in."""
        groups = match.groupdict()
        path = groups.get("path") or ""
        names = {
            "image": os.path.basename(path),
            "holder": _holder(path, context.holders),
            "package": groups.get("package") or "",
            "user": context.user or "your user",
        }
        return Diagnosis(self.headline.format(**names), self.hint.format(**names))


def _holder(path: str, holders: Mapping[str, str]) -> str:
    """Who has ``path`` open: by path, else by file name (a link or another mount point), else
    "another program"."""
    by_name = (who for image, who in holders.items() if os.path.basename(image) == os.path.basename(path))
    return holders.get(path) or next(by_name, ANOTHER_PROGRAM)


ANOTHER_PROGRAM = "another program (a CondaTainer shell or instance, or another Jupyter server)"
NO_CHANNEL = "No conda channel could be reached"
_PATH = r"(?P<path>/?[^\s:]+?)"
# Most specific first: a FATAL line often carries several of these words.
RULES: tuple[Rule, ...] = (
    Rule(
        re.compile(rf"can't open {_PATH} for writing, currently in use by another process"),
        "The env {image} is open for writing by {holder}",
        "A writable env can be mounted by one container at a time: shut that kernel down (or close "
        "the program), or use a read-only kernel of the env",
    ),
    Rule(
        re.compile(rf"image {_PATH}: (?:.*: )?image format not recognized"),
        "The image {image} is damaged or not an image",
        "Rebuild or copy it again (a partial download or copy looks like this), or remove it",
    ),
    Rule(
        re.compile(rf"image {_PATH}: .*lstat \S+: no such file or directory"),
        "The image {image} is missing",
        "It was moved or deleted: put it back, or point the kernel at images that exist "
        "(jupyter condatainer kernelspecs list shows each kernel's overlays)",
    ),
    Rule(
        re.compile(rf"{_PATH} is not readable by the current user"),
        "You may not read the image {image}",
        "Ask its owner to make it readable (chmod a+r), or use your own copy",
    ),
    Rule(
        re.compile(r'"python3?": executable file not found in \$PATH|no `python` on the container PATH'),
        "This stack has no Python",
        "Add a Python overlay (e.g. python/3.11) or an env with python to the kernel's overlays",
    ),
    Rule(
        re.compile(r"no mapping entry found in /etc/subuid"),
        "--fakeroot needs a subuid range and {user} has none",
        "An admin must add {user} to /etc/subuid and /etc/subgid (usermod --add-subuids … --add-subgids …)",
    ),
    Rule(
        re.compile(r"(?i)failed to create user namespace|user namespaces? (?:is |are )?not (?:supported|enabled)"),
        "Apptainer cannot create a user namespace on this machine",
        "An admin must enable unprivileged user namespaces (sysctl user.max_user_namespaces=15000, "
        "and kernel.unprivileged_userns_clone=1 where it exists) or install Apptainer setuid",
    ),
    Rule(
        re.compile(
            r"(?i)fuse: device not found|/dev/fuse|fusermount\S*: |squashfuse\S* not found|fuse2fs\S* not found"
        ),
        "Apptainer cannot mount the overlays: FUSE is not available",
        "An admin must load the fuse module and let users open /dev/fuse, and install squashfuse "
        "and fuse2fs (or install Apptainer setuid)",
    ),
    Rule(
        re.compile(r"(?i)no space left on device|disk quota exceeded"),
        "The disk (or your quota) is full",
        "Free some space in the image directory or the env, or make a larger env; nothing was changed",
    ),
    Rule(
        re.compile(r"because of: No candidates were found for (?P<package>[^\s,]+)"),
        "The package {package} is not in the channels",
        "Check its name, or add the channel that has it; nothing was changed",
    ),
    Rule(
        re.compile(r"(?i)cannot solve the request|could not solve|unsatisfiable|conflicting requirements"),
        "These packages cannot be installed together: the solver found a conflict",
        "Relax or change the versions asked for (the solver's reasons follow); nothing was changed",
    ),
    Rule(
        re.compile(
            r"(?i)dns error|failed to lookup address|could not resolve host|name or service not known|"
            r"network is unreachable|connection refused|error sending request for url|failed to fetch repodata"
        ),
        NO_CHANNEL,
        "Give a channel this machine can reach: a local file:///path/to/channel in the channel field, "
        "or start the server with MAMBA_CHANNEL_ALIAS set to a reachable mirror in its environment",
    ),
)


def diagnose(output: str, context: Context | None = None) -> Diagnosis | None:
    """The first line for a tool's ``output`` (stdout and stderr), or None when none fits."""
    context = context or Context()
    for rule in RULES:
        match = rule.pattern.search(output)
        if match:
            return rule.explain(match, context)
    return None


def detail(lines: Sequence[str]) -> str:
    """The tool's last lines, without Apptainer's noise: the detail under the first line."""
    plain = (_ANSI.sub("", line).rstrip() for line in lines)
    kept = [line for line in plain if line.strip() and not _NOISE.search(line)]
    return "\n".join(kept[-DETAIL_LINES:])


_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Apptainer colours its ERROR lines on a terminal
_NOISE = re.compile(r"gocryptfs|Instance stats will not be available|(?:passwd|group) file doesn't exist")


def explain(what: str, output: str, context: Context | None = None) -> str:
    """An error message: the plain first line (or ``what failed`` when no rule fits), then the
    tool's lines, ``what failed:`` heading them when the first line did not say it."""
    found = diagnose(output, context)
    tail = detail(output.splitlines()) or "(no output)"
    if found is None:
        return f"{what} failed:\n{tail}"
    return f"{found.line}\n{what} failed:\n{tail}"
