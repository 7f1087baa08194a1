"""Operations on CondaTainer images: list, create env, install/remove packages, delete.

One implementation for the REST API, the CLI and the ``%condatainer`` magic. Package
changes run CondaTainer's own micromamba wrappers (``mm-create``, ``mm-install -y``,
``mm-remove -y``, ``mm-clean``) inside the base image, exactly as the CLI does, with the
env's ``.img`` mounted writable — through the running instance when a live kernel has
it mounted, otherwise in a one-shot container. One operation per env at a time
(a lock file shared with every process of this user).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import shutil
import secrets
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from filelock import FileLock, Timeout

from . import command, history, names
from .config import CondaTainerConfig
from .envmeta import EnvUnreadableError, read_env_meta
from .instance import (
    Instance,
    InstanceManager,
    check_fakeroot,
    fakeroot_hint,
    kill_group,
    runtime_dir,
    spawn,
    write_private,
)
from .kernelspecs import KernelspecStore, custom_spec
from .locks import env_lock_path, is_in_use, is_locked, locked_files
from .overlays import Catalog, Overlay, OverlayError, OverlayNotFoundError, scan
from .plan import ENV_PREFIX, StackRequest, plan_container
from .probes import ImageProbe, read_sidecar
from .state import Owner

DEFAULT_PACKAGES = ("zlib",)  # CondaTainer's minimal env
MIN_SIZE_MB, MAX_SIZE_MB = 64, 1024 * 1024
_SPEC_RE = re.compile(
    r"^(?:[A-Za-z0-9_.\-]+::)?[A-Za-z0-9_][A-Za-z0-9_.\-]*"  # [channel::]name
    r"(?:\s*(?:==|>=|<=|!=|~=|=|<|>)?\s*[A-Za-z0-9_.*+!,|<>=~\-]*)?"  # version constraint
    r"(?:\[[A-Za-z0-9_.*+!,|<>=~\-= ]*\])?$"  # [key=value] brackets
)
_CHANNEL_RE = re.compile(r"^(?:[A-Za-z0-9_.\-]+(?:/[A-Za-z0-9_.\-]+)*|(?:file|https?)://[A-Za-z0-9_.~:/\-]+)$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+\-]{0,63}(?:/[A-Za-z0-9][A-Za-z0-9._+\-]{0,63})?$")
_SHELL_CHARS = set(";&`$(){}\\'\"\n\r\t")


class EnvBusyError(RuntimeError):
    """Another operation, a kernel or the CondaTainer CLI is using the env."""


class Reporter(Protocol):
    """Progress sink: a job context on the server, the cell's output in the magic."""

    def log(self, line: str) -> None: ...

    def step(self, progress: float, message: str) -> None: ...

    def point_of_no_return(self) -> None: ...


def validate_specs(specs: Sequence[str]) -> list[str]:
    """Conda match-specs, refusing anything that is not one (and every shell character)."""
    if not specs:
        raise ValueError("no package specs given")
    cleaned = []
    for spec in specs:
        spec = str(spec).strip()
        if len(spec) > 200 or set(spec) & _SHELL_CHARS or not _SPEC_RE.match(spec):
            raise ValueError(
                f"invalid package spec {spec!r}: use conda match-spec form, "
                "e.g. 'numpy', 'numpy>=1.26', 'conda-forge::numpy=1.26'"
            )
        cleaned.append(spec)
    return cleaned


def validate_channels(channels: Sequence[str]) -> list[str]:
    cleaned = [str(c).strip() for c in channels if str(c).strip()]
    for channel in cleaned:
        if not _CHANNEL_RE.match(channel) or ".." in channel.split("/"):
            raise ValueError(f"invalid channel {channel!r}: a channel name (conda-forge) or a file:// or https:// URL")
    return cleaned


def validate_env_name(name: str) -> str:
    """A new env's name: ``myenv`` or ``myenv/1.0`` (file ``myenv--1.0.img``)."""
    name = str(name).strip()
    if not _ENV_NAME_RE.match(name) or ".." in name or "--" in name:
        raise ValueError(f"invalid env name {name!r}: letters, digits, '.', '_', '+', '-' (optionally name/version)")
    return name


def validate_size(size_mb) -> int:
    if isinstance(size_mb, bool) or not isinstance(size_mb, int) or not MIN_SIZE_MB <= size_mb <= MAX_SIZE_MB:
        raise ValueError(f"size_mb must be an integer between {MIN_SIZE_MB} and {MAX_SIZE_MB}")
    return size_mb


@dataclass(frozen=True)
class OverlayInfo:
    """One row of the overlay listing."""

    name: str
    kind: str
    path: str
    size: int
    whatis: str
    notes: dict
    in_use: bool
    kernelspec: str | None
    writable: bool


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    build: str
    channel: str


async def stream(argv: Sequence[str], on_line: Callable[[str], None], env: dict[str, str] | None = None) -> int:
    """Run a command, passing each output line on; kill its process group if cancelled."""
    process = await spawn(argv, env, merge_stderr=True)
    try:
        assert process.stdout is not None
        async for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line and "gocryptfs" not in line:
                on_line(line)
        return await process.wait()
    except asyncio.CancelledError:
        await kill_group(process)
        raise


def channel_binds(channels: Sequence[str]) -> list[str]:
    """Local ``file://`` channels must be visible inside the container at the same path."""
    return [c[len("file://"):] for c in channels if c.startswith("file://") and os.path.isdir(c[len("file://"):])]


def read_conda_meta(meta: history.EnvMeta) -> list[Package]:
    """An env's installed packages, from its metadata (:meth:`EnvOperations.env_meta`)."""
    packages = [
        Package(record.get("name", ""), record.get("version", ""), record.get("build", ""), _channel_name(record))
        for record in meta.installed_records()
    ]
    return sorted(packages, key=lambda p: p.name)


def _channel_name(record: dict) -> str:
    channel = str(record.get("channel", ""))
    return channel.rstrip("/").rsplit("/", 1)[-1] if "://" in channel and not channel.startswith("file://") else channel


class EnvOperations:
    """The operations, bound to one configuration and this server's instances."""

    def __init__(self, config: CondaTainerConfig, instances: InstanceManager | None = None):
        self.config = config
        self.instances = instances or InstanceManager.for_config(config)

    # -- lookup --------------------------------------------------------------------------

    def catalog(self) -> Catalog:
        return scan(self.config.image_dirs, self.config.distro)

    def find(self, name: str) -> Overlay:
        """An image by its exact catalog name; names never reach the filesystem as paths."""
        name = names.normalize(name)
        catalog = self.catalog()
        if name not in catalog.by_name:
            raise OverlayNotFoundError(name, catalog.dirs, catalog.suggestions(name))
        return catalog.by_name[name]

    def find_env(self, name: str) -> Overlay:
        overlay = self.find(name)
        if overlay.kind != "img":
            raise OverlayError(f"{name} is a read-only .{overlay.kind} image; packages can only change in an .img env")
        return overlay

    def target_dir(self) -> Path:
        """Where new envs go: the first writable image directory (the user's, at worst)."""
        for directory in self.config.image_dirs:
            if os.path.isdir(directory) and os.access(directory, os.W_OK):
                return Path(directory)
        fallback = Path(self.config.image_dirs[-1])
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback

    def mounted_by(self, overlay: Overlay) -> Instance | None:
        """Our running instance that has this image mounted, if any."""
        return next(
            (i for i in self.instances.instances.values() if any(o.path == overlay.path for o in i.plan.overlays)),
            None,
        )

    # -- listing -------------------------------------------------------------------------

    def list(self) -> list[OverlayInfo]:
        """Every image with its notes and state; no container is started."""
        catalog = self.catalog()
        locked = locked_files()
        ours = {o.path for i in self.instances.instances.values() for o in (i.plan.base_image, *i.plan.overlays)}
        kernels = self._kernels_by_overlay(catalog)
        rows, seen = [], set()
        for name, overlay in sorted(catalog.by_name.items()):
            if overlay.path in seen:
                continue  # the default-distro alias of an image already listed
            seen.add(overlay.path)
            meta = read_sidecar(overlay)
            try:
                size = os.stat(overlay.path).st_size
            except OSError:
                continue
            rows.append(
                OverlayInfo(
                    name=overlay.name,
                    kind=overlay.kind,
                    path=overlay.path,
                    size=size,
                    whatis=meta.whatis,
                    notes=meta.notes,
                    in_use=overlay.path in ours or is_locked(overlay.path, locked),
                    kernelspec=kernels.get(overlay.path),
                    writable=overlay.kind == "img" and os.access(overlay.path, os.W_OK),
                )
            )
        return rows

    def _kernels_by_overlay(self, catalog: Catalog) -> dict[str, str]:
        """Image path → the kernelspec whose last overlay is that image."""
        found = {}
        for kernel, spec in KernelspecStore().read_all().items():
            if not spec.overlays:
                continue
            last = spec.overlays[-1]
            overlay = catalog.by_name.get(last) or (Overlay.from_path(last) if os.path.isabs(last) else None)
            if overlay is not None:
                found.setdefault(overlay.path, kernel)
        return found

    def env_meta(self, overlay: Overlay, destination: str | None = None) -> history.EnvMeta:
        """The env's metadata as it is now: through our kernel's instance when one has it mounted
        (see :mod:`kernel_provider.envmeta`). Blocking: call it in a thread from the event loop."""
        instance = self.mounted_by(overlay)
        return read_env_meta(overlay, instance, self.instances.apptainer if instance else "", destination)

    def packages(self, name: str) -> list[Package]:
        return read_conda_meta(self.env_meta(self.find_env(name)))

    # -- locking -------------------------------------------------------------------------

    def env_lock(self, path: str) -> FileLock:
        lock_path = env_lock_path(self.config.state_dir, path)
        os.makedirs(os.path.dirname(lock_path), exist_ok=True)
        return FileLock(lock_path)

    def try_lock(self, path: str) -> FileLock:
        lock = self.env_lock(path)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise EnvBusyError(f"another operation on {os.path.basename(path)} is running; try again when it ends") from None
        return lock

    # -- create --------------------------------------------------------------------------

    async def create(
        self,
        report: Reporter,
        name: str,
        size_mb: int = 1024,
        packages: Sequence[str] = (),
        channels: Sequence[str] = (),
        register_kernel: bool = False,
    ) -> str:
        """Make ``name.img`` with a conda env, built in a temporary file, moved in at the end."""
        name = validate_env_name(name)
        size_mb = validate_size(size_mb)
        packages = validate_specs(list(packages) or list(DEFAULT_PACKAGES))
        channels = validate_channels(channels)
        target = self.target_dir() / names.filename_for(name, ".img")
        if target.exists() or name in self.catalog().by_name:
            raise FileExistsError(f"an image named {name} already exists")
        apptainer = self.config.require_apptainer()
        # The owner's identity is in the name, so a sweep can tell a dead build from a live one.
        owner = Owner.current()
        tmp = target.with_name(f".{target.stem}.{owner.pid}-{owner.start_time}.{secrets.token_hex(3)}.tmp.img")
        try:
            report.step(0.05, f"creating a {size_mb} MB ext3 overlay")
            argv = [apptainer, "overlay", "create", "--size", str(size_mb), "--create-dir", ENV_PREFIX, str(tmp)]
            lines: list[str] = []
            if await stream(argv, lambda line: (lines.append(line), report.log(line))) != 0:
                raise RuntimeError(_failure(f"creating {target.name} (apptainer overlay create)", lines))
            temporary = Overlay.from_path(str(tmp))
            report.step(0.15, f"solving and installing {' '.join(packages)}")
            cmd = ["mm-create", "-y", *[a for c in channels for a in ("-c", c)], *packages]
            cmd = history.recorded(cmd, f"create {name} {' '.join(packages)}", current_user(), self.via)
            await self._run_in_oneshot(report, temporary, cmd, channels, what="mm-create")
            report.step(0.85, "cleaning the package cache")
            await self._run_in_oneshot(report, temporary, ["mm-clean", "-a", "-y", "-q"], channels, what="mm-clean", check=False)
            report.step(0.95, f"moving {target.name} into place")
            os.chmod(tmp, 0o644)
            os.link(tmp, target)  # fails if the name appeared meanwhile: never clobber
        finally:
            tmp.unlink(missing_ok=True)
        if register_kernel:
            kernel = self.register_kernel(name)
            report.log(f"registered kernel {kernel}")
        return f"created {target}"

    def register_kernel(self, name: str) -> str:
        """A kernelspec for an env; a Python overlay goes first when the env has no python."""
        overlay = self.find_env(name)
        has_python = "python" in self.env_meta(overlay).versions()
        stack = [name]
        if not has_python:
            pythons = self.catalog().versions_of("python")
            if pythons:
                stack.insert(0, pythons[-1].name)
        spec = custom_spec(stack, label=f"{name} (env)", writable=True, share=True)
        KernelspecStore().write(spec)
        return spec.name

    # -- install / remove ----------------------------------------------------------------

    async def change(self, report: Reporter, name: str, verb: str, specs: Sequence[str], channels: Sequence[str] = ()) -> str:
        """``mm-install -y`` / ``mm-remove -y`` / ``mm-update -y`` in an env, safely."""
        if verb not in ("install", "remove", "update"):
            raise ValueError(f"unknown package operation {verb!r}")
        specs = validate_specs(specs)
        channels = validate_channels(channels)
        overlay = self.find_env(name)
        cmd = [f"mm-{verb}", "-y", *[a for c in channels for a in ("-c", c)], *specs]
        cmd = history.recorded(cmd, f"{verb} {' '.join(specs)}", current_user(), self.via)
        before: dict[str, str] = {}

        async def note_versions() -> None:  # under the env lock, just before the change
            before.update((await asyncio.to_thread(self.env_meta, overlay)).versions())

        await self.run_change(report, overlay, cmd, channels, prepare=note_versions)
        done = f"{verb} {' '.join(specs)}: done"
        try:
            after = (await asyncio.to_thread(self.env_meta, overlay)).versions()
        except EnvUnreadableError:
            return done  # the change is made; only the note about a new Python could be missing
        note = history.python_gained_note(before, after)
        return f"{done}; {note}" if note else done

    via = "jupyter-condatainer"  # recorded with each revision (the CLI sets its own)

    async def run_change(
        self, report: Reporter, overlay: Overlay, cmd: list[str], channels: Sequence[str] = (),
        binds: Sequence[str] = (), prepare: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Run a package command on an env under its lock: in our kernel's instance that has it
        mounted, else in a one-shot container with a snapshot; refused while another container
        has it mounted. ``prepare`` runs once the lock is held (checks that need it)."""
        lock = self.try_lock(overlay.path)
        try:
            if prepare is not None:
                await prepare()
            instance = self.mounted_by(overlay)
            if instance is not None:
                await self._run_in_instance(report, instance, cmd)
            else:
                if is_in_use(overlay.path) or is_locked(overlay.path, locked_files()):
                    raise EnvBusyError(
                        f"{overlay.name} is mounted by another container (a kernel of another server or a "
                        "CondaTainer shell); stop it first"
                    )
                await self._run_with_snapshot(report, overlay, cmd, channels, binds)
        finally:
            lock.release()

    async def _run_in_instance(self, report: Reporter, instance: Instance, cmd: list[str]) -> None:
        if not instance.plan.writable:
            raise EnvBusyError(
                f"the env is mounted read-only by a running kernel ({instance.name}); restart that kernel "
                "with a writable kernelspec or stop it first"
            )
        label = history.command_label(cmd)
        report.step(0.2, f"running {label} in the kernel's instance {instance.name}")
        report.log(f"{label} runs in {instance.name}, the instance of a running kernel (no restart needed)")
        report.point_of_no_return()
        argv = command.instance_exec_argv(self.instances.apptainer, instance.name, str(instance.env_file), cmd)
        lines: list[str] = []
        rc = await stream(argv, lambda line: (lines.append(line), report.log(line)))
        if rc != 0:
            raise RuntimeError(_failure(label, lines))

    async def _run_with_snapshot(
        self, report: Reporter, overlay: Overlay, cmd: list[str], channels: Sequence[str], binds: Sequence[str] = ()
    ) -> None:
        """Keep a sparse copy so a failure or cancel puts the image back exactly as it was.

        The env lock is held meanwhile; if this process dies, :meth:`recover` finds the
        snapshot with the lock free and restores it.
        """
        snapshot = snapshot_path(overlay.path)
        report.step(0.1, "taking a snapshot of the env")
        if await stream(["cp", "--sparse=always", "--reflink=auto", "--preserve=all", overlay.path, str(snapshot)], report.log) != 0:
            snapshot.unlink(missing_ok=True)
            raise RuntimeError(f"could not snapshot {overlay.path} (disk full?)")
        try:
            label = history.command_label(cmd)
            report.step(0.2, f"running {label}")
            await self._run_in_oneshot(report, overlay, cmd, channels, what=label, binds=binds)
        except BaseException:
            os.replace(snapshot, overlay.path)
            raise
        snapshot.unlink(missing_ok=True)

    async def _run_in_oneshot(
        self, report: Reporter, overlay: Overlay, cmd: list[str], channels: Sequence[str], what: str, check: bool = True,
        binds: Sequence[str] = (),
    ) -> None:
        plan = plan_container(
            StackRequest(
                overlays=[overlay.path], writable=True, env=self.config.container_env,
                binds=[*channel_binds(channels), *binds],
            ),
            self.catalog(),
            ImageProbe(),
            environ=os.environ,
            cwd=os.getcwd(),
            uid=os.getuid(),
            extra_binds=self.config.container_binds(),
        )
        check_fakeroot(plan)
        env_file = write_private(runtime_dir() / f"oneshot-{os.getpid()}-{id(report)}.env", command.render_env_file(plan.env))
        lines: list[str] = []
        try:
            argv = command.oneshot_exec_argv(self.config.require_apptainer(), plan, str(env_file), cmd)
            rc = await stream(argv, lambda line: (lines.append(line), report.log(line)))
        finally:
            env_file.unlink(missing_ok=True)
        if rc != 0 and check:
            raise RuntimeError(_failure(what, lines) + fakeroot_hint(plan))

    # -- recovery ------------------------------------------------------------------------

    def recover(self) -> list[str]:
        """Undo what a killed process left in the image directories (ours only).

        Half-built envs (``.NAME.PID-START.*.tmp.img`` whose builder is gone) are removed;
        a snapshot whose env lock is free means an install died midway: it is restored,
        so the env is exactly as before that install.
        """
        actions = []
        for directory in self.config.image_dirs:
            if not os.access(directory, os.W_OK):
                continue
            for path in [*Path(directory).glob(".*.tmp.img"), *Path(directory).glob(".*.tmp.sqf")]:
                owner = _tmp_owner(path.name)
                if owner is not None and not owner.is_alive():
                    path.unlink(missing_ok=True)
                    actions.append(f"removed unfinished {path.name}")
            for path in Path(directory).glob(".*.tmp.stage"):
                owner = _tmp_owner(path.name)
                if owner is not None and not owner.is_alive():
                    shutil.rmtree(path, ignore_errors=True)
                    actions.append(f"removed unfinished {path.name}")
            for snapshot in Path(directory).glob(".*.img.snapshot"):
                image = snapshot.with_name(snapshot.name[1 : -len(".snapshot")])
                lock = self.env_lock(str(image))
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    continue  # an operation is running right now
                try:
                    os.replace(snapshot, image)
                    actions.append(f"restored {image.name} from its snapshot")
                finally:
                    lock.release()
        return actions

    # -- delete --------------------------------------------------------------------------

    def delete(self, name: str) -> None:
        """Remove an image and its sidecar — refused while anyone uses it."""
        overlay = self.find(name)
        if overlay.kind == "sif":
            raise OverlayError("base images are managed by CondaTainer; remove them with the condatainer CLI")
        if self.mounted_by(overlay) or is_locked(overlay.path, locked_files()) or is_in_use(overlay.path):
            raise EnvBusyError(f"{name} is in use (a running kernel or container); stop it first")
        lock = self.try_lock(overlay.path)
        try:
            os.unlink(overlay.path)
            Path(overlay.sidecar_path).unlink(missing_ok=True)
        finally:
            lock.release()
        store = KernelspecStore()
        for kernel, spec in store.read_all().items():
            if spec.overlays and spec.overlays[-1] in (name, overlay.path):
                store.remove(kernel)


def current_user() -> str:
    """Who a revision is recorded for: this process's user."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return os.environ.get("USER") or str(os.getuid())


def snapshot_path(image: str) -> Path:
    return Path(image).with_name(f".{os.path.basename(image)}.snapshot")


def _tmp_owner(filename: str) -> Owner | None:
    """The builder recorded in a temporary env's name (``.x.PID-START.rand.tmp.img``)."""
    match = re.search(r"\.(\d+)-(\d+)\.[0-9a-f]+\.tmp\.(?:img|sqf|stage)$", filename)
    if not match:
        return None
    return Owner(int(match.group(1)), int(match.group(2)), socket.gethostname())


def _failure(what: str, lines: list[str]) -> str:
    detail = "\n".join(lines[-15:]) or "(no output)"
    return f"{what} failed:\n{detail}"


def as_json(rows) -> list[dict]:
    return [asdict(row) for row in rows]
