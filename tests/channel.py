"""A local conda channel with real packages, for tests that run the ``mm-*`` wrappers.

conda-forge cannot be reached from the test machines, so the tests install from packages built
here: real ``.conda`` archives (py-rattler-build's ``assemble_package``) indexed with
``rattler.index.index_fs`` (``repodata.json`` per subdir), laid out as a channel *root*:

    ROOT/conda-forge/{linux-64,noarch}/   the packages below
    ROOT/bioconda/{linux-64,noarch}/      empty, but a valid channel

Channel names resolve against the channel alias, as in conda and micromamba, so with
``MAMBA_CHANNEL_ALIAS=file://ROOT`` the names CondaTainer's ``mm-create`` uses by default
(``conda-forge``, ``bioconda``, saved to ``.condarc``) mean these directories, and the wrappers
run exactly as CondaTainer calls them (``mm-create -y zlib``, ``mm-install -y demopkg``). ROOT
must be visible inside the container at the same path (bind it).

Packages (linux-64 unless said otherwise):

- ``zlib 1.3.1``: CondaTainer's default package for a new env (``include/zlib.h``).
- ``libdemo 1.0`` and ``2.0``: ship ``share/libdemo/VERSION``.
- ``demo-tool 1.0``: depends on ``libdemo >=1.0``; ``bin/demo-tool`` prints
  ``demo-tool 1.0 libdemo <libdemo's version>``.
- ``python 3.11.2``: symlinks ``bin/python``, ``bin/python3``, ``bin/python3.11`` to the base
  image's ``/usr/bin/python3.11`` plus a ``pyvenv.cfg``: the env becomes a venv of the
  container's Python, so ``/ext3/env/bin/python`` imports what is installed in the env.
- ``demopkg 0.1`` (``noarch: python``, depends on ``python >=3.8``): module ``demopkg`` with
  ``__version__ = "0.1"``.
- ``demo-broken 1.0``: depends on ``libdemo >=3``, which no package provides (unsolvable).
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CHANNEL = "conda-forge"
EMPTY_CHANNELS = ("bioconda",)
SUBDIRS = ("linux-64", "noarch")
TIMESTAMP = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)  # reproducible archives

DEMO_TOOL = """#!/bin/sh
# demo-tool: prints its version and the version of the libdemo next to it
prefix=$(cd "$(dirname "$0")/.." && pwd)
echo "demo-tool 1.0 libdemo $(cat "$prefix/share/libdemo/VERSION")"
"""


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    files: dict  # relative path -> text content, or ("symlink", target), or (text, mode)
    depends: tuple = ()
    noarch: str | None = None

    @property
    def build_string(self) -> str:
        digest = hashlib.sha1(f"{self.name}-{self.version}".encode()).hexdigest()[:7]
        return ("pyh" if self.noarch == "python" else "h") + digest + "_0"


PACKAGES = (
    Package("zlib", "1.3.1", {"include/zlib.h": "/* zlib 1.3.1 (test package) */\n"}),
    Package("libdemo", "1.0", {"share/libdemo/VERSION": "1.0\n"}),
    Package("libdemo", "2.0", {"share/libdemo/VERSION": "2.0\n"}),
    Package("demo-tool", "1.0", {"bin/demo-tool": (DEMO_TOOL, 0o755)}, depends=("libdemo >=1.0",)),
    Package(
        "python",
        "3.11.2",
        {
            "bin/python": ("symlink", "/usr/bin/python3.11"),
            "bin/python3": ("symlink", "python"),
            "bin/python3.11": ("symlink", "python"),
            "pyvenv.cfg": "home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11.2\n",
        },
    ),
    Package(
        "demopkg",
        "0.1",
        {"site-packages/demopkg/__init__.py": '"""A tiny test package."""\n\n__version__ = "0.1"\n'},
        depends=("python >=3.8",),
        noarch="python",
    ),
    Package("demo-broken", "1.0", {"share/demo-broken/README": "needs libdemo >=3\n"}, depends=("libdemo >=3",)),
)


def build_channel(directory: str | os.PathLike) -> str:
    """Build and index the channel root in ``directory``; return the ``conda-forge`` channel URL.

    ``channel_alias(directory)`` is the matching ``MAMBA_CHANNEL_ALIAS``. The work runs in a child
    Python: a process that made async py-rattler calls may crash while the interpreter shuts
    down (after the work is done), which must not take the test run with it.
    """
    result = subprocess.run([sys.executable, __file__, str(directory)], capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"building the test channel failed:\n{result.stdout}{result.stderr}")
    return channel_url(directory)


def _build(directory: str | os.PathLike) -> None:
    from rattler_build import assemble_package

    root = Path(directory).resolve()
    channel = root / CHANNEL
    for name in (CHANNEL, *EMPTY_CHANNELS):
        for subdir in SUBDIRS:
            (root / name / subdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="stage-", dir=root) as stage_root:
        for package in PACKAGES:
            stage = Path(stage_root) / f"{package.name}-{package.version}"
            _stage_files(stage, package.files)
            subdir = "noarch" if package.noarch else "linux-64"
            assemble_package(
                name=package.name,
                version=package.version,
                target_platform=subdir,
                build_string=package.build_string,
                output_dir=str(channel / subdir),
                files_dir=str(stage),
                depends=list(package.depends),
                noarch=package.noarch,
                summary=f"{package.name} {package.version} (jupyter-condatainer test package)",
                timestamp=TIMESTAMP,
            )
    for name in (CHANNEL, *EMPTY_CHANNELS):
        _index(root / name)


def channel_url(directory: str | os.PathLike) -> str:
    return (Path(directory).resolve() / CHANNEL).as_uri()


def channel_alias(directory: str | os.PathLike) -> str:
    """The channel alias under which ``conda-forge``/``bioconda`` are these local channels."""
    return Path(directory).resolve().as_uri()


def content_hash() -> str:
    """Changes whenever this module (and so the packages) changes."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def ensure_channel(cache: str | os.PathLike) -> Path:
    """The channel root under ``cache/<content hash>``, built once (atomically) and then reused."""
    cache = Path(cache)
    root = cache / content_hash()
    if (root / ".complete").is_file():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
    try:
        build_channel(scratch)
        (scratch / ".complete").write_text(channel_url(root) + "\n")
        for path in [scratch, *scratch.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        try:
            scratch.rename(root)
        except OSError:  # built meanwhile by someone else
            if not (root / ".complete").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return root


@dataclass(frozen=True)
class LocalChannel:
    """A built channel root: bind ``root`` and pass ``env`` to use it from the wrappers."""

    root: Path

    @property
    def url(self) -> str:
        """``file://ROOT/conda-forge`` (for ``-c``)."""
        return channel_url(self.root)

    @property
    def alias(self) -> str:
        return channel_alias(self.root)

    @property
    def env(self) -> dict[str, str]:
        """Makes the channel names ``conda-forge``/``bioconda`` resolve to this root."""
        return {"MAMBA_CHANNEL_ALIAS": self.alias}

    def __str__(self) -> str:
        return self.url


def _stage_files(stage: Path, files: dict) -> None:
    for relative, content in files.items():
        path = stage / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, tuple) and content[0] == "symlink":
            path.symlink_to(content[1])
            continue
        text, mode = content if isinstance(content, tuple) else (content, 0o644)
        path.write_text(text)
        path.chmod(mode)


def _index(channel: Path) -> None:
    from rattler.index import index_fs

    async def run() -> None:
        await index_fs(channel, write_zst=False, write_shards=False, force=True)

    asyncio.run(run())
    shutil.rmtree(channel / ".tmp", ignore_errors=True)


if __name__ == "__main__":
    _build(sys.argv[1])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip the interpreter shutdown that py-rattler's threads can crash
