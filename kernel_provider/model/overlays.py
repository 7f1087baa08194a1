"""The overlay model: which image files exist and what a user's overlay spec means.

Mirrors CondaTainer's ``container/resolve.go``: directories are scanned in search
order and the first file for a name wins; ``python/3.11``, ``python=3.11`` and
``python--3.11`` are one name; a bare name picks the newest version; paths
(``./env.img``, ``/abs/x.sqf``) are used as given. Scanning is one ``scandir`` per
directory and never starts a container, so listing hundreds of overlays is cheap.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kernel_provider.model import names

KINDS = {".sif": "sif", ".sqf": "sqf", ".img": "img"}


class OverlayError(ValueError):
    """An overlay stack that cannot be built; the message says what to do."""


class OverlayNotFoundError(OverlayError, LookupError):
    """A spec that matches no image, with the names it probably meant."""

    def __init__(self, spec: str, searched: Iterable[str], suggestions: list[str]):
        self.spec = spec
        self.suggestions = suggestions
        hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(f"overlay {spec!r} not found in {', '.join(searched) or '(no image directories)'}.{hint}")


@dataclass(frozen=True)
class Overlay:
    """One image file: a base ``.sif``, a read-only ``.sqf`` or a writable ``.img``."""

    name: str
    path: str
    kind: str
    mode: str = ""  # an explicit ":ro"/":rw" the user wrote after the spec

    @classmethod
    def from_path(cls, path: str, mode: str = "") -> Overlay:
        """An image given by its path (not found in the catalog); refused unless it is a .sif, .sqf or .img."""
        filename = os.path.basename(path)
        kind = KINDS.get(os.path.splitext(filename)[1], "")
        if not kind:
            raise OverlayError(f"{path}: not an image (expected .sif, .sqf or .img)")
        return cls(names.name_from_filename(filename), os.path.abspath(path), kind, mode)

    @property
    def app_root(self) -> str:
        """Mount point of the overlay's payload, ``/cnt/<name>/<version>``."""
        return "/cnt/" + self.name

    @property
    def sidecar_path(self) -> str:
        """The ``<image>.env`` next to the image: CondaTainer's variables and notes for it."""
        return self.path + ".env"

    @property
    def is_data(self) -> bool:
        """A data overlay (``genome/hg38/star``: two slashes) carries data only: nothing of it goes on PATH."""
        return names.is_data_overlay(self.name)

    def mount_arg(self, writable: bool) -> str:
        """``--overlay`` value: ``.sqf`` always ``:ro``; ``.img`` ``:rw`` only when writing."""
        if self.mode:
            return self.path + self.mode
        if self.kind == "img":
            return self.path + (":rw" if writable else ":ro")
        return self.path + ":ro"


@dataclass(frozen=True)
class Catalog:
    """Every image in the search directories, by normalised name (first match wins)."""

    dirs: tuple[str, ...]
    by_name: Mapping[str, Overlay]
    distro: str = ""

    def versions_of(self, package: str) -> list[Overlay]:
        """Overlays named ``package/<version>``, oldest first."""
        prefix = package + "/"
        found = [o for n, o in self.by_name.items() if n.startswith(prefix) and "/" not in n[len(prefix) :]]
        return sorted(found, key=lambda o: names.version_key(names.split_name_version(o.name)[1]))

    def base_image(self) -> Overlay | None:
        """``<distro>--base_image.sif``, first found in the search order."""
        for directory in self.dirs:
            path = os.path.join(directory, f"{self.distro}--base_image.sif")
            if os.path.isfile(path):
                return Overlay.from_path(path)
        return None

    def suggestions(self, name: str) -> list[str]:
        """Close matches for an unknown name: other versions first, then similar names."""
        package = names.split_name_version(name)[0]
        siblings = [o.name for o in self.versions_of(package)]
        candidates = [n for n in self.by_name if not n.endswith("base_image")]
        similar = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
        return list(dict.fromkeys(siblings + similar))[:5]


def scan(dirs: Iterable[str], distro: str = "") -> Catalog:
    """Build the catalog of the image directories (missing directories are skipped)."""
    by_name: dict[str, Overlay] = {}
    dirs = tuple(dirs)
    for directory in dirs:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in sorted(entries, key=lambda e: e.name):
            kind = KINDS.get(os.path.splitext(entry.name)[1])
            # Hidden files are work in progress (a temporary env, a snapshot): never images.
            if not kind or entry.name.startswith(".") or not entry.is_file():
                continue
            overlay = Overlay(names.name_from_filename(entry.name), entry.path, kind)
            by_name.setdefault(overlay.name, overlay)
            # Default-distro overlays can also be addressed by their bare name.
            if distro and overlay.name.startswith(distro + "/"):
                by_name.setdefault(overlay.name[len(distro) + 1 :], overlay)
    return Catalog(dirs, by_name, distro)


def _split_mode(spec: str) -> tuple[str, str]:
    for mode in names.MOUNT_MODES:
        if spec.endswith(mode):
            return spec[: -len(mode)], mode
    return spec, ""


def looks_like_path(spec: str) -> bool:
    """A spec the user meant as a file (``./env.img``, ``/abs/x.sqf``, ``~/y``), used as given, not looked up."""
    return spec.endswith(names.IMAGE_SUFFIXES) or spec.startswith(("/", "./", "../", "~"))


def resolve(spec: str, catalog: Catalog, cwd: str = ".") -> Overlay:
    """Turn one user spec into an :class:`Overlay`, exactly as CondaTainer would."""
    bare, mode = _split_mode(spec.strip())
    if not bare:
        raise OverlayError("empty overlay name")
    if looks_like_path(bare):
        path = os.path.join(cwd, os.path.expanduser(bare))
        if not os.path.isfile(path):
            raise OverlayError(
                f"The image {os.path.basename(path)} is missing ({os.path.abspath(path)}). It was moved or "
                "deleted: put it back, or use images that exist"
            )
        return Overlay.from_path(path, mode)

    raw_name, op, minimum = names.split_constraint(bare)
    name = names.normalize(raw_name)
    if op:
        package, preferred = names.split_name_version(name)
        matching = [
            o
            for o in catalog.versions_of(package)
            if names.satisfies(names.split_name_version(o.name)[1], op, minimum, preferred)
        ]
        if matching:
            return _with_mode(max(matching, key=lambda o: names.version_key(names.split_name_version(o.name)[1])), mode)
    if name in catalog.by_name and catalog.by_name[name].kind != "sif":
        return _with_mode(catalog.by_name[name], mode)
    if "/" not in name and (versions := [o for o in catalog.versions_of(name) if o.kind != "sif"]):
        return _with_mode(versions[-1], mode)
    raise OverlayNotFoundError(spec, catalog.dirs, catalog.suggestions(name))


def _with_mode(overlay: Overlay, mode: str) -> Overlay:
    return Overlay(overlay.name, overlay.path, overlay.kind, mode) if mode else overlay
