"""An env's metadata (``conda-meta``, ``.condarc``, ``etc/conda``) read on the host as it is now.

Every reader — the package listing, history, export, rollback, freeze — goes through
:func:`read_env_meta`, because where the truth is depends on who has the ``.img`` mounted:

- one of our instances (a kernel): through that instance (``tar -c`` inside it, unpacked here).
  While a container has an ``.img`` mounted, what it wrote may not be in the file yet, so
  ``debugfs`` would show an older env (an older revision count, a rollback that looks
  unapplied, a freeze of an old revision);
- another container, writable (a kernel of another server, a CondaTainer shell, a package
  change): refused with :class:`EnvUnreadableError`, for the same reason;
- nobody, or read-only mounts only: ``debugfs`` reads the file, no container needed.

Blocking (it runs subprocesses): call it in a thread from the event loop.
"""

from __future__ import annotations

import io
import os
import pwd
import subprocess
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from kernel_provider.host.debugfs import find_debugfs
from kernel_provider.host.instances import Instance
from kernel_provider.host.locks import ImageBusyError, is_locked, locked_files
from kernel_provider.host.process import apptainer_env, apptainer_message
from kernel_provider.incontainer import history
from kernel_provider.incontainer.constants import ENV_PREFIX
from kernel_provider.incontainer.history import EnvMeta
from kernel_provider.model import command
from kernel_provider.model.overlays import Overlay

META_PATHS = ("conda-meta", ".condarc", "etc/conda")  # relative to the env prefix
READ_TIMEOUT = 120.0
READ_ATTEMPTS = 3


class EnvUnreadableError(ImageBusyError):
    """The env cannot be read reliably now; the message says why and what to do."""


def image_owner(path: str) -> str:
    """Who owns the image file: the user of revisions made outside jupyter-condatainer."""
    try:
        return pwd.getpwuid(os.stat(path).st_uid).pw_name
    except (KeyError, OSError):
        return ""


def read_env_meta(
    overlay: Overlay, instance: Instance | None = None, apptainer: str = "", destination: str | None = None
) -> EnvMeta:
    """The env's metadata; ``instance``: our instance that has it mounted (run with ``apptainer``).

    ``destination``: where the files are copied to (kept for the caller, e.g. freeze carries the
    activation scripts over); by default a temporary directory that is removed.
    """
    if destination is None:
        with tempfile.TemporaryDirectory(prefix="jct-meta-") as tmp:
            return read_env_meta(overlay, instance, apptainer, tmp)
    if instance is not None:
        _copy_from_instance(overlay, instance, apptainer, destination)
    elif is_locked(overlay.path, locked_files(write_only=True)):
        raise EnvUnreadableError(
            f"{overlay.name} is open read-write in another container (a kernel of another Jupyter server, "
            "a CondaTainer shell or a package change); its packages and history can't be read reliably "
            "until that stops"
        )
    else:
        _copy_with_debugfs(overlay.path, destination)
    return history.load_env_meta(destination, owner=image_owner(overlay.path))


def _copy_from_instance(overlay: Overlay, instance: Instance, apptainer: str, destination: str) -> None:
    """``tar -c`` of the metadata inside the running instance, unpacked into ``destination``."""
    # A missing path is no error; hard links (conda-meta's records are linked into our sidecar)
    # are stored as files, since a link member may come before its file.
    tar = ["tar", "-c", "--ignore-failed-read", "--hard-dereference", "-C", ENV_PREFIX, *META_PATHS]
    argv = command.instance_exec_argv(apptainer, instance.name, str(instance.env_file), tar)
    for _ in range(READ_ATTEMPTS):
        result = _run_read(argv)
        # tar's exit 1 "file changed as we read it": a writer was busy (or fuse-overlayfs touched a
        # directory's ctime on first access, seen without root); the next read is consistent.
        if result.returncode != 1 or b"file changed as we read it" not in result.stderr:
            break
    if result.returncode != 0:
        raise EnvUnreadableError(
            f"could not read {overlay.name} through the container of the kernel that has it open "
            f"({instance.name}); try again, or restart that kernel:\n"
            + apptainer_message(result.stderr.decode(errors="replace"))
        )
    if result.stdout:
        with tarfile.open(fileobj=io.BytesIO(result.stdout)) as archive:
            _unpack(archive, Path(destination))


def _run_read(argv: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            argv,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            env=apptainer_env(argv[0]),
            timeout=READ_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, -1, b"", f"no answer in {READ_TIMEOUT:.0f} s".encode())


def _unpack(archive: tarfile.TarFile, destination: Path) -> None:
    """Regular files and directories only, never outside ``destination`` (no links: a link in
    an env may point anywhere on the host)."""
    for member in archive.getmembers():
        parts = PurePosixPath(member.name).parts
        if not (member.isfile() or member.isdir()) or not parts or parts[0] == "/" or ".." in parts:
            continue
        target = destination.joinpath(*parts)
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        source = archive.extractfile(member)
        if source is not None:
            target.write_bytes(source.read())
            target.chmod(member.mode & 0o755)


def _copy_with_debugfs(image: str, destination: str) -> None:
    """Copy the metadata out of the ``.img`` file with ``debugfs``: read-only, no mount."""
    debugfs = find_debugfs() or "debugfs"  # missing: the run fails and the env reads as empty
    inner = f"upper{ENV_PREFIX}"
    target = Path(destination)
    (target / "etc").mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs") as commands:
        commands.write(f'rdump "{inner}/conda-meta" "{target}"\n')
        commands.write(f'rdump "{inner}/etc/conda" "{target / "etc"}"\n')
        commands.write(f'dump "{inner}/.condarc" "{target / ".condarc"}"\n')
        commands.flush()
        subprocess.run(
            [debugfs, "-f", commands.name, image],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
            env={**os.environ, "LC_ALL": "C"},
        )
