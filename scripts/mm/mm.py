"""micromamba-like package commands behind the test base image's ``mm-*`` wrappers.

CondaTainer's base images ship ``mm-create``, ``mm-install``, ``mm-remove``, ``mm-update``,
``mm-clean`` and ``mm-list``: shell wrappers that run ``micromamba -r "$CNT_CONDA_PREFIX" ... -n
base``, i.e. on the conda environment of the writable ``.img`` overlay (``/ext3/env``), with the
package cache in ``$CNT_CONDA_PREFIX/pkgs``. micromamba cannot be downloaded on the machines this
project is tested on, so the test base image built by ``scripts/build-images.sh`` runs this module
instead, on py-rattler (a real conda solver and installer) in a private virtualenv:

    mm-create [-y] [-q] [--dry-run] [--json] [-c CHANNEL]... [-f FILE] SPEC...
    mm-create [-y] [-q] [--dry-run] -f EXPLICIT_FILE [--requested SPEC]...
    mm-install [-y] [-q] [--dry-run] [--json] [-c CHANNEL]... [--override-channels] [-f FILE] SPEC...
    mm-install [-y] [-q] [--dry-run] (-f | --explicit) EXPLICIT_FILE [--requested SPEC]...
    mm-update [-y] [-q] [--dry-run] [--json] [-c CHANNEL]... [--override-channels] [-a] [SPEC...]
    mm-remove [-y] [-q] [--dry-run] [--json] SPEC...
    mm-clean [-a] [-i] [-p] [-t] [-l] [-f] [-y] [-q] [--dry-run]
    mm-list [REGEX] [--json] [-f] [--reverse] [--explicit [--md5|--sha256]] [--canonical] [--export]

Behaviour kept from the real wrappers:

- ``$CNT_CONDA_PREFIX`` names the environment; unset means no writable env is mounted: error.
- Channels: ``mm-create`` uses ``-c`` channels (``conda-forge`` appended when missing) or
  ``conda-forge`` + ``bioconda``, and writes them to ``$CNT_CONDA_PREFIX/.condarc``;
  ``mm-install``/``mm-update`` use the ``-c`` channels followed by the ``.condarc`` ones.
  Channel names resolve against ``$MAMBA_CHANNEL_ALIAS`` (also ``$CONDA_CHANNEL_ALIAS``), as in
  micromamba; the tests point it at a local directory holding ``conda-forge/`` and ``bioconda/``.
- Package cache: ``$CNT_CONDA_PREFIX/pkgs`` (repodata in its ``cache/``), or micromamba's
  ``$CONDA_PKGS_DIRS`` (comma-separated; the first is written, all are looked in).
- Pins: every line of ``conda-meta/pinned`` (written by ``mm-pin``) constrains every solve.
- Specs are conda match specs (``python=3.11``, ``libdemo >=2``). ``conda-meta/history`` gets
  micromamba's entries (``==> date <==``, ``# cmd:``, ``-``/``+`` dists, ``# update specs:``,
  ``# remove specs:``); the requested specs of later commands come from it.
- Explicit files (``@EXPLICIT``, one package URL per line, optionally ``#<md5>`` or
  ``#sha256:<hex>``: what ``mm-list --explicit`` and ``conda list --explicit`` write) install
  exactly those packages, without a solve, as micromamba does: ``mm-create -f FILE`` makes the env
  from them; ``mm-install -f FILE`` installs them next to what is there (replacing packages of the
  same name). ``mm-install --explicit FILE`` (an addition of this test image, used to roll an env
  back to an earlier revision) makes the env hold *exactly* the file's packages, removing the
  others, in one transaction. ``--requested SPEC`` says which specs the user asked for (kept in
  ``conda-meta/history`` for later solves); without it, explicit installs keep the requested specs of
  the packages that remain. Hashes are checked against the channel's records.
- Failures (unsolvable, unknown package, unreachable channel) print the solver's message to
  stderr and exit 1 before anything in the environment changes.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import datetime
import json
import os
import re
import shlex
import shutil
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CHANNELS = ["conda-forge", "bioconda"]
HISTORY_CONDA_VERSION = "3.8.0"  # what micromamba writes as "# conda version:"


class MMError(Exception):
    """A failure to report as ``ERROR: ...`` with exit status 1."""


# --- environment, configuration and history -------------------------------------------------


def env_prefix() -> Path:
    value = os.environ.get("CNT_CONDA_PREFIX", "")
    if not value:
        raise MMError(
            "CNT_CONDA_PREFIX is not set! (no writable env mounted: run with a writable .img "
            "overlay, e.g. condatainer e env.img, or exec -w -o env.img)"
        )
    return Path(value)


def pkgs_dirs(prefix: Path) -> list[Path]:
    """The package caches, as micromamba's ``pkgs_dirs``: ``$CONDA_PKGS_DIRS`` (comma-separated),
    else ``PREFIX/pkgs`` (the wrappers' root prefix is the env). Repodata and downloads go into the
    first (micromamba: the first writable one); a package found in any of them is not fetched."""
    listed = [Path(entry) for entry in os.environ.get("CONDA_PKGS_DIRS", "").split(",") if entry.strip()]
    return listed or [prefix / "pkgs"]


def require_writable(prefix: Path) -> None:
    # The nearest existing ancestor decides: an env image made by the CondaTainer CLI has only
    # upper/ and work/, so /ext3 itself appears only when mm-create makes the prefix (as micromamba does).
    probe = next(p for p in (prefix, *prefix.parents) if p.exists())
    if not os.access(probe, os.W_OK):
        raise MMError(f"{prefix} is not writable (is the .img overlay mounted read-only?)")


def read_condarc(prefix: Path) -> tuple[list[str], str | None]:
    """The ``channels:`` block list and ``channel_priority`` of ``PREFIX/.condarc``.

    A ``channel_alias:`` there applies too (below ``$MAMBA_CHANNEL_ALIAS``, as in micromamba).
    """
    global _RC_ALIAS
    try:
        text = (prefix / ".condarc").read_text()
    except OSError:
        return [], None
    channels: list[str] = []
    priority = None
    in_channels = False
    for line in text.splitlines():
        stripped = line.strip()
        if in_channels:
            if stripped.startswith("- "):
                name = stripped[2:].strip().strip("'\"")
                if name:
                    channels.append(name)
                continue
            if not stripped or stripped.startswith("#"):
                continue
            in_channels = False
        if stripped == "channels:":
            in_channels = True
        elif stripped.startswith("channel_priority:"):
            priority = stripped.split(":", 1)[1].strip().strip("'\"").lower()
        elif stripped.startswith("channel_alias:"):
            _RC_ALIAS = stripped.split(":", 1)[1].strip().strip("'\"") or None
    return channels, priority


def write_condarc(prefix: Path, channels: list[str]) -> None:
    text = "channels:\n" + "".join(f"  - {c}\n" for c in channels)
    (prefix / ".condarc").write_text(text)


def read_pins(prefix: Path) -> list[str]:
    try:
        lines = (prefix / "conda-meta" / "pinned").read_text().splitlines()
    except OSError:
        return []
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def spec_name(spec: str) -> str:
    """The package name of a match spec string (``python=3.11`` → ``python``)."""
    from rattler import MatchSpec

    try:
        name = MatchSpec(spec).name
        return str(name.normalized if hasattr(name, "normalized") else name)
    except Exception:  # noqa: BLE001 - fall back to conda's own splitting
        base = re.split(r"[\s=<>!~\[]", spec.strip(), maxsplit=1)[0]
        return base.split("::")[-1].lower()


def requested_specs(prefix: Path) -> dict[str, str]:
    """What the user asked for so far, by package name, from ``conda-meta/history`` (like mamba)."""
    try:
        text = (prefix / "conda-meta" / "history").read_text()
    except OSError:
        return {}
    specs: dict[str, str] = {}
    for line in text.splitlines():
        match = re.match(r"#\s*(\w+) specs:\s*(.*)$", line.strip())
        if not match:
            continue
        action, value = match.groups()
        try:
            items = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            items = [s.strip() for s in value.strip("[]").split(",") if s.strip()]
        if isinstance(items, str):
            items = [items]
        for item in items:
            name = spec_name(str(item))
            if action in ("remove", "uninstall"):
                specs.pop(name, None)
            elif action in ("update", "install", "create", "neutered"):
                specs[name] = str(item)
    return specs


def dist_str(record) -> str:
    """micromamba's history form: ``<channel url>/<subdir>::<name>-<version>-<build>``."""
    url = str(record.url)
    location = url[: -len(record.file_name) - 1] if url.endswith("/" + record.file_name) else url
    return f"{location}::{record.name.normalized}-{record.version}-{record.build}"


def append_history(
    prefix: Path, command: str, argv: list[str], unlinked, linked, update: list[str] = (), remove: list[str] = ()
) -> None:
    lines = [
        f"==> {datetime.datetime.now().strftime('%Y-%m-%d %H:%M:%S')} <==",
        f"# cmd: {shlex.join(['mm-' + command, *argv])}",
        f"# conda version: {HISTORY_CONDA_VERSION}",
    ]
    lines += sorted("-" + dist_str(r) for r in unlinked)
    lines += sorted("+" + dist_str(r) for r in linked)
    if update:
        lines.append("# update specs: " + json.dumps(list(update)))
    if remove:
        lines.append("# remove specs: " + json.dumps(list(remove)))
    history = prefix / "conda-meta" / "history"
    history.parent.mkdir(parents=True, exist_ok=True)
    with history.open("a") as out:
        out.write("\n".join(lines) + "\n")


def installed_records(prefix: Path) -> list:
    from rattler import PrefixRecord

    meta = prefix / "conda-meta"
    if not meta.is_dir():
        return []
    return [PrefixRecord.from_path(p) for p in sorted(meta.glob("*.json"))]


def make_readable(prefix: Path) -> None:
    """py-rattler writes some files 0600 (conda-meta records): make the env readable by all."""
    for root, dirs, files in os.walk(prefix):
        for name in dirs + files:
            path = os.path.join(root, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode) or st.st_uid != os.geteuid():
                continue
            mode = stat.S_IMODE(st.st_mode)
            wanted = mode | 0o444 | (0o111 if stat.S_ISDIR(st.st_mode) or mode & 0o100 else 0)
            if wanted != mode:
                os.chmod(path, wanted)


# --- channels ------------------------------------------------------------------------------


_RC_ALIAS: str | None = None  # channel_alias from the env's .condarc (install/update)


def channel_alias() -> str | None:
    alias = os.environ.get("MAMBA_CHANNEL_ALIAS") or os.environ.get("CONDA_CHANNEL_ALIAS") or _RC_ALIAS
    return alias.rstrip("/") + "/" if alias else None


def channel_config():
    from rattler import ChannelConfig

    if channel_alias():
        return ChannelConfig(channel_alias=channel_alias(), root_dir=os.getcwd())
    return ChannelConfig(root_dir=os.getcwd())


def merge_channels(*groups: list[str]) -> list[str]:
    seen: list[str] = []
    for group in groups:
        for channel in group:
            if channel not in seen:
                seen.append(channel)
    return seen


def channel_display(record) -> str:
    """``conda-forge`` for a channel under the alias, else the channel's URL."""
    base = str(record.channel or "").rstrip("/")
    alias = channel_alias() or str(channel_config()).split('channel_alias="', 1)[-1].split('"')[0]
    if alias and base.startswith(alias):
        return base[len(alias) :]
    return base


# --- solving and the transaction ------------------------------------------------------------


@dataclass
class Plan:
    prefix: Path
    records: list  # the environment after the transaction
    installed: list
    unlink: list = field(default_factory=list)
    link: list = field(default_factory=list)

    def __post_init__(self):
        old = {r.name.normalized: r for r in self.installed}
        new = {r.name.normalized: r for r in self.records}
        for name, record in old.items():
            if name not in new or not same_package(record, new[name]):
                self.unlink.append(record)
        for name, record in new.items():
            if name not in old or not same_package(old[name], record):
                self.link.append(record)

    @property
    def empty(self) -> bool:
        return not self.unlink and not self.link


def same_package(a, b) -> bool:
    return (str(a.version), str(a.build), str(a.channel).rstrip("/")) == (
        str(b.version),
        str(b.build),
        str(b.channel).rstrip("/"),
    )


def match_specs(specs: list[str]) -> list:
    from rattler import MatchSpec

    out = []
    for spec in specs:
        try:
            out.append(MatchSpec(spec))
        except Exception as error:  # noqa: BLE001 - rattler's parse errors
            raise MMError(f"invalid package spec '{spec}': {error}") from None
    return out


async def solve(prefix: Path, channels: list[str], specs: list[str], locked: list, priority: str | None):
    from rattler import Channel, Gateway, VirtualPackage, VirtualPackageOverrides

    if not channels:
        raise MMError(f"no channels: give -c CHANNEL or list channels in {prefix}/.condarc")
    config = channel_config()
    sources = []
    for name in channels:
        try:
            channel = Channel(name, config)
        except Exception as error:  # noqa: BLE001
            raise MMError(f"invalid channel '{name}': {error}") from None
        if channel.base_url not in [s.base_url for s in sources]:  # a URL and its name
            sources.append(channel)
    try:
        virtual = VirtualPackage.detect(VirtualPackageOverrides.from_env())
    except Exception:  # noqa: BLE001 - detection is best effort, like micromamba
        virtual = []
    # Repodata is cached in the package cache's cache/ as micromamba does; a failed solve leaves no trace.
    pkgs = pkgs_dirs(prefix)[0]
    fresh = [d for d in (pkgs, pkgs / "cache") if not d.exists()]
    gateway = Gateway(cache_dir=pkgs / "cache")
    kwargs = dict(
        gateway=gateway, locked_packages=locked, virtual_packages=virtual, constraints=match_specs(read_pins(prefix))
    )
    wanted = match_specs(specs)
    try:
        return await _solve_with_priority(sources, wanted, priority, kwargs)
    except BaseException as error:
        if fresh:
            shutil.rmtree(fresh[0], ignore_errors=True)
        if not isinstance(error, Exception):
            raise
        named = [c for c in channels if "://" not in c and not c.startswith(("/", "."))]
        if type(error).__name__ in ("GatewayError", "FetchRepoDataError") and named and not channel_alias():
            raise MMError(
                f"{str(error).strip()}\n(channel names such as conda-forge resolve with the channel "
                "alias: without network, set MAMBA_CHANNEL_ALIAS=file:///DIR for local DIR/<name> "
                "channels, or use file:// channel URLs)"
            ) from None
        raise


async def _solve_with_priority(sources, wanted, priority, kwargs):
    from rattler import solve as rattler_solve
    from rattler.channel import ChannelPriority

    strict = ChannelPriority.Strict
    if priority == "disabled":
        return await rattler_solve(sources, wanted, channel_priority=ChannelPriority.Disabled, **kwargs)
    try:
        return await rattler_solve(sources, wanted, channel_priority=strict, **kwargs)
    except Exception as error:  # noqa: BLE001
        # micromamba's default "flexible" priority prefers the first channel with a package but
        # falls back to later ones when that is the only way to a solution.
        if priority == "strict" or len(sources) < 2 or type(error).__name__ != "SolverError":
            raise
        return await rattler_solve(sources, wanted, channel_priority=ChannelPriority.Disabled, **kwargs)


def print_plan(plan: Plan, specs: list[str], action: str) -> None:
    print("\nTransaction\n")
    print(f"  Prefix: {plan.prefix}\n")
    if specs:
        print(f"  {action} specs:\n")
        for spec in specs:
            print(f"   - {spec}")
        print()
    if plan.empty:
        return
    rows = []
    old = {r.name.normalized: r for r in plan.unlink}
    new = {r.name.normalized: r for r in plan.link}
    counts: dict[str, int] = {}
    for name in sorted(set(old) | set(new)):
        if name in old and name in new:
            o, n = old[name], new[name]
            kind = "Upgrade" if n.version > o.version else ("Downgrade" if n.version < o.version else "Change")
            rows.append(("-", o, kind))
            rows.append(("+", n, kind))
        elif name in new:
            kind = "Install"
            rows.append(("+", new[name], kind))
        else:
            kind = "Remove"
            rows.append(("-", old[name], kind))
        counts[kind] = counts.get(kind, 0) + 1
    table = [
        (sign + " " + r.name.normalized, str(r.version), str(r.build), channel_display(r), kind)
        for sign, r, kind in rows
    ]
    widths = [max(len(row[i]) for row in table + [("  Package", "Version", "Build", "Channel", "")]) for i in range(4)]
    header = ("Package", "Version", "Build", "Channel")
    print("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    print("  " + "─" * (sum(widths) + 6))
    current = None
    for cells in table:
        if cells[4] != current:
            current = cells[4]
            print(f"  {current}:")
        print("  " + "  ".join(c.ljust(w) for c, w in zip(cells[:4], widths)).rstrip())
    print("\n  Summary:\n")
    for kind in ("Install", "Change", "Upgrade", "Downgrade", "Remove"):
        if counts.get(kind):
            print(f"  {kind}: {counts[kind]} packages")
    print()


def confirm(args) -> None:
    if args.yes:
        return
    print("Confirm changes: [Y/n] ", end="", flush=True)
    answer = sys.stdin.readline()
    if not answer or answer.strip().lower() not in ("", "y", "yes"):
        raise MMError("Aborted.")


async def execute(plan: Plan, requested: list[str], args) -> None:
    from rattler import install

    prefix = plan.prefix
    cache = pkgs_dirs(prefix)[0]
    tag = cache.parent / "CACHEDIR.TAG"
    had_tag = tag.exists()
    prefix.mkdir(parents=True, exist_ok=True)
    await install(
        plan.records,
        target_prefix=prefix,
        cache_dir=cache,
        installed_packages=plan.installed,
        requested_specs=[m._match_spec for m in match_specs(requested)],
        show_progress=False,
        execute_link_scripts=False,
    )
    if not had_tag:  # rattler tags the parent of its package cache, by default the env itself
        tag.unlink(missing_ok=True)


def plan_json(plan: Plan | None, dry_run: bool) -> dict:
    """micromamba's ``--json`` answer: the transaction's FETCH, LINK and UNLINK package lists."""

    def entry(record) -> dict:
        return {
            "name": record.name.normalized,
            "version": str(record.version),
            "build": str(record.build),
            "build_number": int(record.build_number),
            "channel": channel_display(record),
            "subdir": str(record.subdir),
            "fn": str(record.file_name),
            "url": str(record.url),
            "size": int(getattr(record, "size", None) or 0),
        }

    if plan is None or plan.empty:
        return {"success": True, "dry_run": dry_run, "message": "All requested packages already installed"}

    def cached(record, pkgs: Path) -> bool:
        unpacked = re.sub(r"(\.tar\.bz2|\.conda)$", "", record.file_name)
        return (pkgs / record.file_name).exists() or (pkgs / unpacked).is_dir()

    fetch = [r for r in plan.link if not any(cached(r, pkgs) for pkgs in pkgs_dirs(plan.prefix))]
    return {
        "success": True,
        "dry_run": dry_run,
        "prefix": str(plan.prefix),
        "actions": {
            "PREFIX": str(plan.prefix),
            "FETCH": [entry(r) for r in fetch],
            "LINK": [entry(r) for r in plan.link],
            "UNLINK": [entry(r) for r in plan.unlink],
        },
    }


def finish(plan: Plan, command: str, args, update=(), remove=()) -> None:
    append_history(plan.prefix, command, args.argv, plan.unlink, plan.link, update, remove)
    make_readable(plan.prefix)
    if not args.quiet:
        print("Transaction finished")


def load_file_specs(path: str) -> tuple[list[str], list[str]]:
    """Channels and specs of an environment YAML (``channels:``/``dependencies:``) or spec list."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise MMError(f"cannot read {path}: {error.strerror}") from None
    if path.endswith((".yml", ".yaml")):
        blocks: dict[str, list[str]] = {}
        current = None
        for raw in text.splitlines():
            line = raw.split(" #", 1)[0].rstrip()
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if not line[0].isspace():
                current = line.rstrip(":").strip() if line.endswith(":") else None
                continue
            item = line.strip()
            if current in ("channels", "dependencies") and item.startswith("- "):
                value = item[2:].strip().strip("'\"")
                if value.endswith(":"):
                    raise MMError(f"{path}: '{value}' sections (pip packages) are not supported")
                blocks.setdefault(current, []).append(value)
        return blocks.get("channels", []), blocks.get("dependencies", [])
    if is_explicit(text):
        raise MMError(f"{path}: an explicit (@EXPLICIT) file, use it with -f alone")
    specs = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return [], specs


# --- explicit (@EXPLICIT) files -------------------------------------------------------------


def is_explicit(text: str) -> bool:
    return any(line.strip() == "@EXPLICIT" for line in text.splitlines())


def read_explicit(path: str) -> list[tuple[str, str]] | None:
    """``(url, hash)`` of each package of an explicit file; None for any other kind of file."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise MMError(f"cannot read {path}: {error.strerror}") from None
    if not is_explicit(text):
        return None
    entries = []
    started = False
    for raw in text.splitlines():
        line = raw.strip()
        if line == "@EXPLICIT":
            started = True
            continue
        if not started or not line or line.startswith("#"):
            continue
        url, _, digest = line.partition("#")
        url = url.strip()
        if "://" not in url:
            url = Path(url).resolve().as_uri()
        if not url.endswith((".conda", ".tar.bz2")):
            raise MMError(f"{path}: not a package URL: {line}")
        entries.append((url, digest.strip()))
    if not entries:
        raise MMError(f"{path}: the explicit file lists no packages")
    return entries


def _hash_matches(record, digest: str) -> bool:
    if not digest:
        return True
    kind, _, value = digest.partition(":") if ":" in digest else ("", "", digest)
    value = value.lower()
    if kind == "sha256" or (not kind and len(value) == 64):
        return record.sha256 is None or record.sha256.hex() == value
    if kind == "md5" or (not kind and len(value) == 32):
        return record.md5 is None or record.md5.hex() == value
    raise MMError(f"unknown hash '{digest}' (expected an md5 or sha256:<hex>)")


def _split_url(url: str) -> tuple[str, str, str]:
    """``(channel url, subdir, file name)`` of a package URL."""
    location, file_name = url.rsplit("/", 1)
    channel, subdir = location.rsplit("/", 1)
    return channel, subdir, file_name


def _dist_of(file_name: str) -> str:
    for ext in (".conda", ".tar.bz2"):
        if file_name.endswith(ext):
            return file_name[: -len(ext)]
    return file_name


async def explicit_records(prefix: Path, entries: list[tuple[str, str]], installed: list) -> list:
    """The repodata records of an explicit file's packages (installed ones are reused)."""
    from rattler import Channel, Gateway

    by_url = {str(r.url): r for r in installed}
    found: dict[str, object] = {}
    wanted: dict[tuple[str, str], list[str]] = {}
    for url, _ in entries:
        if url in by_url:
            found[url] = by_url[url]
        else:
            channel, subdir, _ = _split_url(url)
            wanted.setdefault((channel, subdir), []).append(url)
    if wanted:
        pkgs = pkgs_dirs(prefix)[0]
        fresh = [d for d in (pkgs, pkgs / "cache") if not d.exists()]
        gateway = Gateway(cache_dir=pkgs / "cache")
        try:
            for (channel, subdir), urls in wanted.items():
                names = sorted({_dist_of(_split_url(u)[2]).rsplit("-", 2)[0] for u in urls})
                result = await gateway.query([Channel(channel, channel_config())], [subdir], names, recursive=False)
                records = [r for group in result for r in group]
                exact = {str(r.url): r for r in records}
                by_dist = {_dist_of(r.file_name): r for r in records}
                for url in urls:
                    record = exact.get(url) or by_dist.get(_dist_of(_split_url(url)[2]))
                    if record is None:
                        raise MMError(f"package not found in its channel: {url}")
                    found[url] = record
        except BaseException:
            if fresh:
                shutil.rmtree(fresh[0], ignore_errors=True)
            raise
    records, seen = [], {}
    for url, digest in entries:
        record = found[url]
        if not _hash_matches(record, digest):
            raise MMError(f"hash mismatch for {url}: the file says {digest}, the channel has another package")
        name = record.name.normalized
        if name in seen:
            raise MMError(f"the explicit file lists {name} twice ({seen[name]} and {url})")
        seen[name] = url
        records.append(record)
    return records


def explicit_channels(records) -> list[str]:
    """The channels of explicit records, as names when they are under the channel alias."""
    return merge_channels([channel_display(r) or str(r.channel) for r in records])


async def install_explicit(args, prefix: Path, entries, command: str, exact: bool) -> int:
    """Install an explicit file's packages (``exact``: and nothing else) without solving."""
    installed = installed_records(prefix)
    wanted = await explicit_records(prefix, entries, installed)
    if exact or command == "create":
        records = wanted
    else:
        replaced = {r.name.normalized for r in wanted}
        records = [r for r in installed if r.name.normalized not in replaced] + wanted
    names = {r.name.normalized for r in records}
    current = requested_specs(prefix)
    if args.requested:
        match_specs(args.requested)
        requested = {spec_name(s): s for s in args.requested}
        missing = sorted(set(requested) - names)
        if missing:
            raise MMError(f"requested specs name packages the file does not list: {', '.join(missing)}")
    else:
        requested = {n: s for n, s in current.items() if n in names}
    dropped = sorted(n for n in current if n not in requested)
    plan = Plan(prefix, records, installed)
    args.plan = plan
    if not args.quiet:
        print_plan(plan, list(requested.values()), "Installing")
    if plan.empty and requested == current:
        if not args.quiet:
            print("All requested packages already installed")
        return 0
    if args.dry_run:
        print("Dry run. Not executing the transaction.")
        return 0
    confirm(args)
    await execute(plan, list(requested.values()), args)
    finish(plan, command, args, update=list(requested.values()), remove=dropped)
    if command == "create":
        write_condarc(prefix, merge_channels(explicit_channels(records), ["conda-forge"]))
    make_readable(prefix)
    return 0


# --- commands ------------------------------------------------------------------------------


async def cmd_create(args) -> int:
    prefix = env_prefix()
    require_writable(prefix)
    if installed_records(prefix):
        raise MMError(f"a conda environment already exists at {prefix} (use mm-install/mm-remove)")
    entries = read_explicit(args.file) if args.file else None
    if entries is not None or args.requested:
        if entries is None:
            raise MMError("--requested needs an explicit (@EXPLICIT) file given with -f")
        if args.specs or args.channel:
            raise MMError("an explicit file installs exactly its packages: no SPEC or -c with it")
        return await install_explicit(args, prefix, entries, "create", exact=True)
    file_channels, file_specs = load_file_specs(args.file) if args.file else ([], [])
    specs = file_specs + args.specs
    if not specs:
        raise MMError("no packages given (e.g. mm-create -y zlib)")
    if args.file:
        saved = merge_channels(file_channels) or list(DEFAULT_CHANNELS)
        channels = merge_channels(args.channel, saved)
    elif args.channel:
        saved = merge_channels(args.channel, [] if "conda-forge" in args.channel else ["conda-forge"])
        channels = saved
    else:
        saved = channels = list(DEFAULT_CHANNELS)
    records = await solve(prefix, channels, specs, [], None)
    plan = Plan(prefix, records, [])
    args.plan = plan
    if not args.quiet:
        print_plan(plan, specs, "Updating")
    if args.dry_run:
        print("Dry run. Not executing the transaction.")
        return 0
    confirm(args)
    await execute(plan, specs, args)
    finish(plan, "create", args, update=specs)
    write_condarc(prefix, saved)
    make_readable(prefix)
    return 0


async def cmd_install(args, update: bool = False) -> int:
    prefix = env_prefix()
    require_writable(prefix)
    saved, priority = read_condarc(prefix)
    explicit_file = getattr(args, "explicit", None)
    entries = read_explicit(explicit_file or args.file) if (explicit_file or args.file) else None
    if explicit_file and args.file:
        raise MMError("give either -f FILE or --explicit FILE")
    if explicit_file and entries is None:
        raise MMError(f"{explicit_file}: not an explicit (@EXPLICIT) file")
    if entries is not None or getattr(args, "requested", None):
        if update:
            raise MMError("mm-update does not take explicit files (use mm-install -f FILE)")
        if entries is None:
            raise MMError("--requested needs an explicit (@EXPLICIT) file given with -f or --explicit")
        if args.specs or args.channel:
            raise MMError("an explicit file installs exactly its packages: no SPEC or -c with it")
        if not installed_records(prefix):
            raise MMError(f"no conda environment at {prefix} (create it with mm-create -f FILE)")
        return await install_explicit(args, prefix, entries, "install", exact=bool(explicit_file))
    file_channels, file_specs = load_file_specs(args.file) if getattr(args, "file", None) else ([], [])
    channels = merge_channels(args.channel, file_channels, [] if args.override_channels else saved)
    new_specs = file_specs + args.specs
    update_all = update and (args.all or not new_specs)
    if not new_specs and not update_all:
        raise MMError("no packages given")
    installed = installed_records(prefix)
    if update and not installed:
        raise MMError(f"no conda environment at {prefix} (create it with mm-create)")
    installed_names = {r.name.normalized for r in installed}
    # Earlier requests still hold; a new spec for the same name replaces the old one.
    requested = {n: s for n, s in requested_specs(prefix).items() if n in installed_names}
    for spec in new_specs:
        requested[spec_name(spec)] = spec
    if update:
        for spec in new_specs:
            if spec_name(spec) not in installed_names:
                raise MMError(
                    f"package '{spec_name(spec)}' is not installed in {prefix}, nothing to update (use mm-install)"
                )
        unlocked = installed_names if update_all else {spec_name(s) for s in new_specs}
        locked = [r for r in installed if r.name.normalized not in unlocked]
    else:
        locked = installed
    records = await solve(prefix, channels, list(requested.values()), locked, priority)
    plan = Plan(prefix, records, installed)
    args.plan = plan
    if not args.quiet:
        print_plan(plan, new_specs, "Updating" if update else "Installing")
    if plan.empty:
        if not args.quiet:
            print("All requested packages already installed" if not update else "All packages are up to date")
        return 0
    if args.dry_run:
        print("Dry run. Not executing the transaction.")
        return 0
    confirm(args)
    await execute(plan, list(requested.values()), args)
    finish(plan, "update" if update else "install", args, update=new_specs)
    return 0


async def cmd_remove(args) -> int:
    prefix = env_prefix()
    require_writable(prefix)
    if not args.specs:
        raise MMError("no packages given")
    installed = installed_records(prefix)
    by_name = {r.name.normalized: r for r in installed}
    removing = set()
    for spec in args.specs:
        name = spec_name(spec)
        if name not in by_name:
            raise MMError(f"package '{name}' is not installed in {prefix}")
        removing.add(name)
    # Like micromamba: packages that depend on a removed one go too, then everything no longer
    # needed by the remaining requested specs (prune). No channel is needed for this.
    dependents = _dependents_closure(installed, removing)
    keep_requested = {n: s for n, s in requested_specs(prefix).items() if n in by_name and n not in dependents}
    roots = set(keep_requested) or (set(by_name) - dependents)
    keep = _dependency_closure(installed, roots) - dependents
    records = [r for r in installed if r.name.normalized in keep]
    plan = Plan(prefix, records, installed)
    args.plan = plan
    if not args.quiet:
        print_plan(plan, args.specs, "Removing")
    if args.dry_run:
        print("Dry run. Not executing the transaction.")
        return 0
    confirm(args)
    await execute(plan, list(keep_requested.values()), args)
    finish(plan, "remove", args, remove=args.specs)
    return 0


def _depends(record) -> list[str]:
    return [spec_name(d) for d in record.depends if not d.startswith("__")]


def _dependents_closure(installed, names: set[str]) -> set[str]:
    out = set(names)
    changed = True
    while changed:
        changed = False
        for record in installed:
            name = record.name.normalized
            if name not in out and any(d in out for d in _depends(record)):
                out.add(name)
                changed = True
    return out


def _dependency_closure(installed, roots: set[str]) -> set[str]:
    by_name = {r.name.normalized: r for r in installed}
    out: set[str] = set()
    todo = [n for n in roots if n in by_name]
    while todo:
        name = todo.pop()
        if name in out:
            continue
        out.add(name)
        todo.extend(d for d in _depends(by_name[name]) if d in by_name and d not in out)
    return out


async def cmd_clean(args) -> int:
    prefix = env_prefix()
    pkgs = prefix / "pkgs"
    everything = args.all or args.force_pkgs_dirs
    if not (everything or args.index_cache or args.packages or args.tarballs or args.locks):
        print("Nothing to do (give -a to remove the package cache)")
        return 0
    require_writable(prefix)
    removed = []
    if pkgs.is_dir():
        for entry in sorted(pkgs.iterdir()):
            name = entry.name
            if everything:
                hit = True
            elif name == "cache":
                hit = args.index_cache
            elif name.endswith(".lock"):
                hit = args.locks
            elif entry.is_dir():
                hit = args.packages
            else:
                hit = args.tarballs and name.endswith((".conda", ".tar.bz2"))
            if hit:
                removed.append(entry)
    for entry in removed:
        if not args.quiet:
            print(f"{'Would remove' if args.dry_run else 'Removing'} {entry}")
        if args.dry_run:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    if everything and not args.dry_run and pkgs.is_dir() and not any(pkgs.iterdir()):
        pkgs.rmdir()
    if not args.quiet and not removed:
        print("Nothing to clean")
    return 0


async def cmd_list(args) -> int:
    prefix = env_prefix()
    if not (prefix / "conda-meta").is_dir():
        raise MMError(f"no conda environment at {prefix}")
    pattern = args.regex or ""
    if pattern and args.full_name:
        pattern = f"^{pattern}$"
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise MMError(f"invalid regex '{pattern}': {error}") from None
    records = [r for r in installed_records(prefix) if regex.search(r.name.normalized)]
    records.sort(key=lambda r: r.name.normalized, reverse=args.reverse)
    if args.json:
        out = []
        for r in records:
            url = str(r.url)
            base_url = url[: -len(r.file_name) - 1] if url.endswith("/" + r.file_name) else url
            if base_url.endswith("/" + r.subdir):
                base_url = base_url[: -len(r.subdir) - 1]
            out.append(
                {
                    "base_url": base_url,
                    "build_number": r.build_number,
                    "build_string": str(r.build),
                    "channel": channel_display(r),
                    "dist_name": f"{r.name.normalized}-{r.version}-{r.build}",
                    "md5": r.md5.hex() if r.md5 else "",
                    "name": r.name.normalized,
                    "platform": r.subdir,
                    "sha256": r.sha256.hex() if r.sha256 else "",
                    "url": url,
                    "version": str(r.version),
                }
            )
        print(json.dumps(out, indent=4))
        return 0
    if args.explicit:
        print("@EXPLICIT")
        for r in records:
            suffix = (
                f"#{r.md5.hex()}" if args.md5 and r.md5 else (f"#{r.sha256.hex()}" if args.sha256 and r.sha256 else "")
            )
            print(f"{r.url}{suffix}")
        return 0
    if args.canonical:
        for r in records:
            print(f"{channel_display(r)}/{r.subdir}::{r.name.normalized}-{r.version}-{r.build}")
        return 0
    if args.export:
        for r in records:
            print(f"{r.name.normalized}={r.version}={r.build}")
        return 0
    print(f'List of packages in environment: "{prefix}"\n')
    rows = [(r.name.normalized, str(r.version), str(r.build), channel_display(r)) for r in records]
    header = ("Name", "Version", "Build", "Channel")
    widths = [max([len(header[i])] + [len(row[i]) for row in rows]) for i in range(4)]
    print("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    print("─" * (sum(widths) + 10))
    for row in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


# --- command line --------------------------------------------------------------------------


def parser_for(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"mm-{command}", description=__doc__.split("\n\n")[0])
    parser.add_argument("-q", "--quiet", action="store_true", help="print less")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="ignored")
    if command == "list":
        parser.add_argument("regex", nargs="?", help="only packages whose name matches")
        parser.add_argument("--json", action="store_true", help="micromamba's JSON list")
        parser.add_argument("-f", "--full-name", action="store_true", help="regex matches the whole name")
        parser.add_argument("--reverse", action="store_true")
        parser.add_argument("--explicit", action="store_true", help="package URLs (@EXPLICIT)")
        parser.add_argument("--md5", action="store_true")
        parser.add_argument("--sha256", action="store_true")
        parser.add_argument("-c", "--canonical", action="store_true")
        parser.add_argument("-e", "--export", action="store_true")
        return parser
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    parser.add_argument("--dry-run", action="store_true", help="only show what would change")
    if command == "clean":
        parser.add_argument("-a", "--all", action="store_true", help="remove the whole package cache")
        parser.add_argument("-i", "--index-cache", action="store_true")
        parser.add_argument("-p", "--packages", action="store_true")
        parser.add_argument("-t", "--tarballs", action="store_true")
        parser.add_argument("-l", "--locks", action="store_true")
        parser.add_argument("-f", "--force-pkgs-dirs", action="store_true")
        return parser
    parser.add_argument("specs", nargs="*", metavar="SPEC", help="conda match specs")
    parser.add_argument("--json", action="store_true", help="the transaction as micromamba's JSON on stdout")
    if command == "remove":
        return parser
    parser.add_argument("-c", "--channel", action="append", default=[], help="channel (repeatable)")
    parser.add_argument("-f", "--file", help="environment .yml or spec list")
    if command in ("install", "update"):
        parser.add_argument("--override-channels", action="store_true", help="ignore the channels of .condarc")
    if command in ("create", "install"):
        parser.add_argument(
            "--requested",
            action="append",
            default=[],
            metavar="SPEC",
            help="with an explicit file: a spec the user asked for (repeatable)",
        )
    if command == "install":
        parser.add_argument(
            "--explicit", metavar="FILE", help="make the env exactly the packages of this @EXPLICIT file"
        )
    if command == "update":
        parser.add_argument("-a", "--all", action="store_true", help="update every package")
    return parser


COMMANDS = {
    "create": cmd_create,
    "install": cmd_install,
    "update": lambda args: cmd_install(args, update=True),
    "remove": cmd_remove,
    "clean": cmd_clean,
    "list": cmd_list,
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: mm.py {{{','.join(COMMANDS)}}} [args...]", file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    parser = parser_for(command)
    try:
        args = parser.parse_intermixed_args(rest)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    args.argv = rest
    # CondaTainer starts containers with SSL_CERT_FILE= and CURL_CA_BUNDLE= (empty, so the host's
    # paths do not leak in). micromamba takes empty as unset; py-rattler's HTTP client fails to
    # build on an empty path ("ERROR: builder error"), even for file:// channels.
    for variable in ("SSL_CERT_FILE", "SSL_CERT_DIR", "CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE"):
        if os.environ.get(variable) == "":
            del os.environ[variable]
    try:
        if not getattr(args, "json", False) or command == "list":
            return asyncio.run(COMMANDS[command](args))
        # --json: the text goes to stderr, stdout carries only the JSON (as micromamba's does).
        args.plan = None
        with contextlib.redirect_stdout(sys.stderr):
            status = asyncio.run(COMMANDS[command](args))
        print(json.dumps(plan_json(args.plan, args.dry_run), indent=2))
        return status
    except MMError as error:
        print(f"ERROR: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        print("Interrupted", file=sys.stderr)
    except Exception as error:  # noqa: BLE001 - the solver's/installer's own message
        message = str(error).strip() or type(error).__name__
        print(f"ERROR: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    status = main(sys.argv[1:])
    # py-rattler's native threads can crash the interpreter's shutdown after the work is done;
    # leave without it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
