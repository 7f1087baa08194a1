"""An env's revisions from ``conda-meta/history``; ``environment.yml`` and ``@EXPLICIT`` locks.

Standard library only: the ``%condatainer`` magic imports this inside the container, where it
reads ``/ext3/env`` directly; on the host the same files are copied out first
(:func:`kernel_provider.envs.envmeta.read_env_meta`).

``conda-meta/history`` is what micromamba (and CondaTainer's ``mm-*`` wrappers) write: one entry
per transaction, ``==> date <==``, ``# cmd: …``, ``-``/``+`` package dists, ``# update specs: […]``,
``# remove specs: […]``. Revision *n* is the *n*-th entry (0 = the env's creation), as in
``conda list --revisions``. What the wrappers do not record comes from a sidecar that every
change made through jupyter-condatainer appends to, in the same container run
(:func:`recorded`): ``conda-meta/jupyter-condatainer/history.jsonl`` (who, what they asked for)
and ``conda-meta/jupyter-condatainer/records/`` (hard links to the ``conda-meta`` package
records, so a package's URL and hashes stay known after it is removed — what a lock of an
earlier revision needs).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path

CHANNEL_ALIAS_VARIABLES = ("MAMBA_CHANNEL_ALIAS", "CONDA_CHANNEL_ALIAS")
SIDECAR_DIR = "jupyter-condatainer"  # inside conda-meta/, never *.json there (conda reads those)
SIDECAR_LOG = "history.jsonl"
RECORDS_DIR = "records"

# Runs as: sh -c RECORD_SCRIPT sh INFO_JSON mm-COMMAND ARGS...   (inside the container)
RECORD_SCRIPT = r"""
info=$1; shift
meta="${CNT_CONDA_PREFIX:-/ext3/env}/conda-meta"
count() { if [ -f "$meta/history" ]; then grep -c '^==> ' "$meta/history"; else echo 0; fi; }
before=$(count)
"$@" || exit $?
after=$(count)
if [ "$after" -gt "$before" ]; then
    dir="$meta/jupyter-condatainer"
    if mkdir -p "$dir/records"; then
        for f in "$meta"/*.json; do
            [ -f "$f" ] && { ln -f "$f" "$dir/records/" 2>/dev/null || cp -pf "$f" "$dir/records/"; }
        done
        header=$(grep '^==> ' "$meta/history" | tail -n 1 | tr -d '"\\')
        printf '{"revision": %s, "header": "%s", "info": %s}\n' "$((after - 1))" "$header" "$info" \
            >>"$dir/history.jsonl" || echo "warning: could not record the revision's user" >&2
    fi
fi
exit 0
"""


def recorded(cmd: list[str], command: str, user: str, via: str, when: str = "") -> list[str]:
    """``cmd`` (an ``mm-*`` call) wrapped so the new revision's user and request are recorded."""
    import datetime

    info = {
        "user": user,
        "command": command,
        "via": via,
        "time": when or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return ["sh", "-c", RECORD_SCRIPT, "sh", json.dumps(info, ensure_ascii=True), *cmd]


def command_label(cmd: list[str]) -> str:
    """The ``mm-*`` command inside a possibly wrapped argv (for messages)."""
    return next((arg for arg in cmd if arg.startswith("mm-")), cmd[0] if cmd else "")


# --- model ------------------------------------------------------------------------------------


def short_channel(channel: str) -> str:
    """``conda-forge`` for ``file:///…/conda-forge`` or ``https://…/conda-forge``: how users name it."""
    return str(channel).rstrip("/").rsplit("/", 1)[-1]


def channel_alias(environ) -> str:
    """The site's conda mirror (``MAMBA_CHANNEL_ALIAS``/``CONDA_CHANNEL_ALIAS``), or ``""``."""
    return next((environ[key] for key in CHANNEL_ALIAS_VARIABLES if environ.get(key)), "")


@dataclass(frozen=True)
class Dist:
    """One package as a history line names it: ``<channel>/<subdir>::<name>-<version>-<build>``."""

    channel: str
    subdir: str
    name: str
    version: str
    build: str

    @classmethod
    def parse(cls, text: str) -> Dist:
        """A package from a history line (without its ``+``/``-``); channel and subdir may be missing."""
        location, _, dist = text.strip().rpartition("::")
        channel, subdir = "", ""
        if location:
            channel, _, subdir = location.rstrip("/").rpartition("/")
            if not channel:  # "conda-forge::x-1-0" (no subdir)
                channel, subdir = subdir, ""
        name, version, build = (dist.rsplit("-", 2) + ["", ""])[:3] if dist.count("-") >= 2 else (dist, "", "")
        return cls(channel, subdir, name, version, build)

    @property
    def ident(self) -> str:
        """``name-version-build``: how history lines and package records name one build of a package."""
        return f"{self.name}-{self.version}-{self.build}"

    @property
    def channel_name(self) -> str:
        """The channel as users name it (``conda-forge``), whatever URL the history has."""
        return short_channel(self.channel)

    def to_json(self) -> dict:
        """The package for clients, its channel by the name users know."""
        return {
            "name": self.name,
            "version": self.version,
            "build": self.build,
            "channel": self.channel_name,
            "subdir": self.subdir,
        }


@dataclass
class Entry:
    """One ``==> date <==`` block of ``conda-meta/history``."""

    header: str
    cmd: str = ""
    removed: list[Dist] = field(default_factory=list)
    added: list[Dist] = field(default_factory=list)
    specs: dict[str, list[str]] = field(default_factory=dict)  # action ("update", "remove", …) → specs


@dataclass
class Revision:
    """The env after one history entry: what changed, who asked for what, and every package it holds."""

    number: int
    time: str
    user: str
    command: str  # what the user asked for ("install demo-tool", "rollback to revision 2")
    cmd: str  # the tool's command line, from the history
    via: str
    specs: dict[str, list[str]]
    added: list[dict]
    removed: list[dict]
    changed: list[dict]
    packages: dict[str, Dist]  # the env's packages after this revision, by name
    requested: dict[str, str]  # what the user has asked for so far, by package name

    def to_json(self) -> dict:
        """The revision for clients: packages as a list by name, the requested specs as a list."""
        data = asdict(self)
        data["packages"] = [d.to_json() for _, d in sorted(self.packages.items())]
        data["requested"] = list(self.requested.values())
        return data

    def package_set(self) -> set[tuple[str, str, str]]:
        """The packages it holds, each as its :func:`package_key`: two revisions with the same set are the
        same env (a rollback makes a new revision that holds an old one's packages)."""
        return {package_key(d) for d in self.packages.values()}


class HistoryError(ValueError):
    """A revision that does not exist, or one that cannot be locked; the message says why."""


def _parse_history(text: str) -> list[Entry]:
    entries: list[Entry] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        header = re.match(r"^==>\s*(.*?)\s*<==$", line)
        if header:
            entries.append(Entry(header=header.group(1)))
            continue
        if not entries:
            continue
        entry = entries[-1]
        if line.startswith("# cmd:"):
            entry.cmd = line[len("# cmd:") :].strip()
        elif line.startswith("#"):
            match = re.match(r"#\s*(\w+) specs:\s*(.*)$", line)
            if match:
                entry.specs.setdefault(match.group(1), []).extend(_spec_list(match.group(2)))
        elif line[0] in "+-":
            (entry.added if line[0] == "+" else entry.removed).append(Dist.parse(line[1:]))
    return entries


def _spec_list(value: str) -> list[str]:
    try:
        items = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        items = [s.strip().strip("'\"") for s in value.strip("[]").split(",") if s.strip()]
    if isinstance(items, str):
        items = [items]
    return [str(item) for item in items]


def python_gained_note(before: dict[str, str], after: dict[str, str]) -> str:
    """The note for a change that pulled ``python`` into an env that had none (package name →
    version, before and after), else "". A kernel whose Python comes from an overlay keeps
    running that one, so what was just installed for the env's own Python may not import
    until the kernel restarts on it."""
    if "python" in before or "python" not in after:
        return ""
    version = ".".join(after["python"].split(".")[:2])
    return f"the env now has its own Python {version}; restart the kernel to use it"


def spec_name(spec: str) -> str:
    """``conda-forge::numpy>=1.26[build=x]`` → ``numpy``."""
    base = re.split(r"[\s=<>!~\[]", spec.strip(), maxsplit=1)[0]
    return base.split("::")[-1].lower()


def _read_sidecar(text: str) -> dict[int, dict]:
    found = {}
    for line in text.splitlines():
        try:
            item = json.loads(line)
            found[int(item["revision"])] = {"header": item.get("header", ""), **dict(item.get("info") or {})}
        except (ValueError, KeyError, TypeError):
            continue
    return found


def build_revisions(history_text: str, sidecar_text: str = "", owner: str = "") -> list[Revision]:
    """Every revision, with the package diff of each and the full package set after it."""
    extra = _read_sidecar(sidecar_text)
    state: dict[str, Dist] = {}
    requested: dict[str, str] = {}
    revisions = []
    for number, entry in enumerate(_parse_history(history_text)):
        before = dict(state)
        for dist in entry.removed:
            if dist.name in state and state[dist.name].ident == dist.ident:
                del state[dist.name]
        for dist in entry.added:
            state[dist.name] = dist
        for action, specs in entry.specs.items():
            for spec in specs:
                if action in ("remove", "uninstall"):
                    requested.pop(spec_name(spec), None)
                elif action in ("update", "install", "create", "neutered"):
                    requested[spec_name(spec)] = spec
        added, removed, changed = [], [], []
        for name in sorted(set(before) | set(state)):
            old, new = before.get(name), state.get(name)
            if old == new:
                continue
            if old is None:
                added.append(new.to_json())
            elif new is None:
                removed.append(old.to_json())
            else:
                changed.append({"name": name, "from": old.to_json(), "to": new.to_json()})
        info = extra.get(number, {})
        if info.get("header") and info["header"].strip("=<> ") != entry.header:
            info = {}  # the sidecar does not belong to this entry (history edited by hand?)
        revisions.append(
            Revision(
                number=number,
                time=entry.header,
                user=info.get("user") or owner,
                command=info.get("command") or _describe(entry),
                cmd=entry.cmd,
                via=info.get("via", ""),
                specs={k: list(v) for k, v in entry.specs.items()},
                added=added,
                removed=removed,
                changed=changed,
                packages=dict(state),
                requested=dict(requested),
            )
        )
    return revisions


def _describe(entry: Entry) -> str:
    """``install demo-tool`` from ``# cmd: mm-install -y demo-tool`` (micromamba's own form too)."""
    try:
        words = shlex.split(entry.cmd)
    except ValueError:
        words = entry.cmd.split()
    if not words:
        return ""
    verb = os.path.basename(words[0])
    if verb.startswith("mm-"):
        verb, args = verb[3:], words[1:]
    elif verb in ("micromamba", "mamba", "conda") and len(words) > 1:
        verb, args = words[1], words[2:]
    else:
        args = words[1:]
    for flag in ("--explicit", "-f", "--file"):
        if flag in args and args.index(flag) + 1 < len(args):
            return f"{verb} {flag} {os.path.basename(args[args.index(flag) + 1])}"
    specs = entry.specs.get("remove" if verb in ("remove", "uninstall") else "update", [])
    return " ".join([verb, *specs])


def select(revisions: list[Revision], revision: int | str | None) -> Revision:
    """The revision a user asked for (None or "": the latest); :class:`HistoryError` says which exist."""
    if not revisions:
        raise HistoryError("the env has no history (conda-meta/history is missing or empty)")
    if revision is None or revision == "":
        return revisions[-1]
    try:
        number = int(revision)
    except (TypeError, ValueError):
        raise HistoryError(f"revision must be a number, not {revision!r}") from None
    if isinstance(revision, bool) or not 0 <= number < len(revisions):
        raise HistoryError(f"no revision {revision}: the env has revisions 0 to {len(revisions) - 1}")
    return revisions[number]


# --- an env's metadata ------------------------------------------------------------------------


@dataclass
class EnvMeta:
    """What history/export need from an env's ``conda-meta`` (and ``.condarc``)."""

    history: str = ""
    sidecar: str = ""
    records: dict[str, dict] = field(default_factory=dict)  # "name-version-build" → record (no file lists)
    installed: set[str] = field(default_factory=set)  # idents with a record in conda-meta now
    channels: list[str] = field(default_factory=list)
    owner: str = ""

    def revisions(self) -> list[Revision]:
        """Every revision, oldest first, with who made it where the sidecar knows (else the env's owner)."""
        return build_revisions(self.history, self.sidecar, self.owner)

    def installed_records(self) -> list[dict]:
        """The package records in ``conda-meta`` now (not the kept copies of removed ones)."""
        return [self.records[ident] for ident in sorted(self.installed)]

    def versions(self) -> dict[str, str]:
        """Installed package name → version."""
        return {record["name"]: str(record.get("version", "")) for record in self.installed_records()}


def read_package_records(directory: str | os.PathLike) -> list[dict]:
    """The package records (``*.json``) of a ``conda-meta`` directory, whole; unreadable ones skipped."""
    records = []
    for path in sorted(Path(directory).glob("*.json")) if Path(directory).is_dir() else ():
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("name"):
            records.append(record)
    return records


def load_env_meta(prefix: str | os.PathLike, owner: str = "") -> EnvMeta:
    """Read an env prefix's metadata from a directory (``/ext3/env``, or a copy of its files)."""
    prefix = Path(prefix)
    meta = prefix / "conda-meta"
    result = EnvMeta(owner=owner)
    result.history = _read(meta / "history")
    result.sidecar = _read(meta / SIDECAR_DIR / SIDECAR_LOG)
    for directory, current in ((meta / SIDECAR_DIR / RECORDS_DIR, False), (meta, True)):
        for record in read_package_records(directory):
            for key in ("files", "paths_data", "link", "extracted_package_dir"):
                record.pop(key, None)
            ident = f"{record['name']}-{record.get('version', '')}-{record.get('build', '')}"
            result.records[ident] = record  # conda-meta wins over the kept copies
            if current:
                result.installed.add(ident)
    result.channels = _read_condarc_channels(_read(prefix / ".condarc"))
    return result


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _read_condarc_channels(text: str) -> list[str]:
    channels, inside = [], False
    for line in text.splitlines():
        stripped = line.strip()
        if inside:
            if stripped.startswith("- "):
                channels.append(stripped[2:].strip().strip("'\""))
                continue
            if not stripped or stripped.startswith("#"):
                continue
            inside = False
        if stripped == "channels:":
            inside = True
    return channels


# --- export -----------------------------------------------------------------------------------


def render_environment_yml(name: str, revision: Revision, channels: list[str], alias: str = "") -> str:
    """``environment.yml``: the specs asked for up to the revision, and the channels."""
    wanted = list(channels)
    for dist in revision.packages.values():
        channel = _channel_for_yml(dist.channel, alias)
        if channel and channel not in wanted and (dist.channel_name not in wanted):
            wanted.append(channel)
    lines = [
        f"# {name}, revision {revision.number} ({revision.time}): recreate with",
        "#   mm-create -f environment.yml   (CondaTainer), or conda/micromamba env create -f",
        f"name: {_yml_scalar(name.replace('/', '-'))}",
        "channels:",
        *[f"  - {_yml_scalar(c)}" for c in wanted],
        "dependencies:",
        *[f"  - {_yml_scalar(spec)}" for spec in (revision.requested.values() or _pinned(revision))],
    ]
    return "\n".join(lines) + "\n"


def _pinned(revision: Revision) -> list[str]:
    return [f"{d.name}={d.version}" for _, d in sorted(revision.packages.items())]


def _channel_for_yml(channel: str, alias: str) -> str:
    if not channel:
        return ""
    if alias and channel.rstrip("/").startswith(alias.rstrip("/") + "/"):
        return channel.rstrip("/")[len(alias.rstrip("/")) + 1 :]
    return channel.rstrip("/") if "://" in channel else channel


def _yml_scalar(value: str) -> str:
    return json.dumps(value) if re.search(r"[:#{}\[\],&*!|>'\"%@`]|^\s|\s$", value) else value


def lock_entries(revision: Revision, meta: EnvMeta) -> list[tuple[Dist, dict | None]]:
    """Each package of the revision with its record (None when it was never recorded)."""
    entries = []
    for name in topological(revision.packages, meta.records):
        dist = revision.packages[name]
        entries.append((dist, meta.records.get(dist.ident)))
    return entries


def topological(packages: dict[str, Dist], records: dict[str, dict]) -> list[str]:
    """Package names, dependencies before the packages that need them (ties by name)."""
    depends = {}
    for name, dist in packages.items():
        record = records.get(dist.ident) or {}
        depends[name] = {spec_name(d) for d in record.get("depends", []) if not d.startswith("__")} & set(packages)
    order, done = [], set()

    def visit(name: str, path: tuple) -> None:
        if name in done or name in path:
            return
        for dep in sorted(depends.get(name, ())):
            visit(dep, path + (name,))
        done.add(name)
        order.append(name)

    for name in sorted(packages):
        visit(name, ())
    return order


def render_explicit(name: str, revision: Revision, meta: EnvMeta, strict: bool = True) -> str:
    """An ``@EXPLICIT`` lock: each package's URL with its md5 (``#sha256:`` when no md5 is known).

    conda, mamba, micromamba and the ``mm-*`` wrappers read it (``mm-create -f FILE``).
    ``strict``: refuse when a package's record is unknown (installed outside jupyter-condatainer
    and gone since); otherwise its URL is derived from the history and has no hash.
    """
    platform = next((d.subdir for d in revision.packages.values() if d.subdir and d.subdir != "noarch"), "")
    lines = [
        "# This file may be used to create an environment using:",
        "# $ mm-create -f <this file>        (or: conda create --name <env> --file <this file>)",
        f"# env: {name}, revision {revision.number} ({revision.time})",
        *([f"# platform: {platform}"] if platform else []),
        "@EXPLICIT",
    ]
    unknown = []
    for dist, record in lock_entries(revision, meta):
        if record and record.get("url"):
            digest = record.get("md5") or (f"sha256:{record['sha256']}" if record.get("sha256") else "")
            lines.append(record["url"] + (f"#{digest}" if digest else ""))
        elif dist.channel and dist.subdir:
            unknown.append(dist.ident)
            lines.append(f"{dist.channel.rstrip('/')}/{dist.subdir}/{dist.ident}.conda")
        else:
            unknown.append(dist.ident)
    if unknown and strict:
        raise HistoryError(
            f"revision {revision.number} cannot be locked: no package record (URL and hashes) is known for "
            f"{', '.join(sorted(unknown))} (installed outside jupyter-condatainer and removed since)"
        )
    return "\n".join(lines) + "\n"


def local_channel_dirs(lock_text: str) -> list[str]:
    """Directories of the ``file://`` channels a lock's URLs point into (to bind into a container)."""
    found: list[str] = []
    for line in lock_text.splitlines():
        if line.startswith("file://"):
            channel = os.path.dirname(os.path.dirname(line.split("#", 1)[0][len("file://") :]))
            if channel and channel not in found and os.path.isdir(channel):
                found.append(channel)
    return found


def package_key(dist: Dist) -> tuple[str, str, str]:
    """What makes two revisions hold the same package: name, version and build (not how the channel is spelled)."""
    return (dist.name, dist.version, dist.build)


def format_history(revisions: list[Revision]) -> str:
    """A plain-text listing: one block per revision with its diff."""
    out = []
    for rev in revisions:
        who = f"  by {rev.user}" if rev.user else ""
        out.append(f"rev {rev.number}  {rev.time}{who}  {rev.command}")
        for item in rev.added:
            out.append(f"    + {item['name']} {item['version']} ({item['build']}, {item['channel']})")
        for item in rev.changed:
            out.append(
                f"    ~ {item['name']} {item['from']['version']} -> {item['to']['version']} ({item['to']['build']})"
            )
        for item in rev.removed:
            out.append(f"    - {item['name']} {item['version']}")
    return "\n".join(out) if out else "no history"
