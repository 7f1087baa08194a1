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
import shutil
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from kernel_provider.envs import workfiles
from kernel_provider.envs.checkpoints import checkpoint
from kernel_provider.envs.envmeta import EnvUnreadableError, read_env_meta
from kernel_provider.envs.journal import Journal
from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.host.containers import check_fakeroot, fakeroot_hint, plan_for_host
from kernel_provider.host.holders import ANOTHER_PROGRAM, holder, holders
from kernel_provider.host.instances import Instance, InstanceManager
from kernel_provider.host.locks import (
    ImageWriteHold,
    held_by_anyone,
    in_use_message,
    is_locked,
    locked_files,
)
from kernel_provider.host.probes import ImageProbe
from kernel_provider.host.process import failure, output_tail, run_logged
from kernel_provider.host.runtime import runtime_dir, write_private
from kernel_provider.incontainer import history
from kernel_provider.incontainer.constants import ENV_PREFIX
from kernel_provider.incontainer.envlock import EnvBusyError, EnvLock, env_lock_path, lock_dir
from kernel_provider.kernel.kernelspecs import (
    KernelspecStore,
    StackSpec,
    custom_spec,
    installed_kernel_names,
)
from kernel_provider.model import command, names
from kernel_provider.model.overlays import (
    Catalog,
    Overlay,
    OverlayError,
    OverlayNotFoundError,
    scan,
)
from kernel_provider.model.plan import ContainerPlan, StackRequest
from kernel_provider.model.validation import (
    check_new_name,
    validate_channels,
    validate_env_name,
    validate_size,
    validate_specs,
)

DEFAULT_PACKAGES = ("zlib",)  # CondaTainer's minimal env


class Reporter(Protocol):
    """Progress sink: a job context on the server, the cell's output in the magic."""

    def log(self, line: str) -> None:
        """Pass on a line of the tool's output."""

    def step(self, progress: float, message: str) -> None:
        """Say how far the operation is (0 to 1) and what runs now."""

    def point_of_no_return(self) -> None:
        """From here on the operation must not be stopped: stopping halfway could leave a half-changed env."""


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
    in_use_by: str = ""  # who has it open, in words: notebooks and kernels, or "another program"
    kernel_stack: list[str] = field(default_factory=list)  # the overlays its kernel mounts (python/3.11 + env)
    warnings: list[str] = field(default_factory=list)  # lines of its .env sidecar that were skipped, and why


@dataclass(frozen=True)
class Package:
    """One installed package, as the REST API lists it (``GET …/packages``)."""

    name: str
    version: str
    build: str
    channel: str


def channel_binds(channels: Sequence[str]) -> list[str]:
    """Local ``file://`` channels must be visible inside the container at the same path (with
    their parent: it becomes the channel alias, see :func:`channel_env`)."""
    local = [c[len("file://") :].rstrip("/") for c in channels if c.startswith("file://")]
    return [os.path.dirname(path) for path in local if os.path.isdir(path) and os.path.dirname(path) != "/"]


def channel_env(channels: Sequence[str], container_env: dict[str, str]) -> dict[str, str]:
    """The containers' variables for an operation with ``channels``.

    CondaTainer's ``mm-create`` adds ``conda-forge`` to the channels it is given, and a name
    resolves through the channel alias (the network, unless a site mirror is set). A local
    ``file://DIR/conda-forge`` typed by a user — or any local ``file://DIR/NAME`` when no alias is
    set — makes ``DIR`` the alias for this operation, so ``conda-forge`` is looked up beside it
    and nothing tries the network.
    """
    local = [c[len("file://") :].rstrip("/") for c in channels if c.startswith("file://")]
    local = [path for path in local if os.path.isdir(path) and os.path.dirname(path) != "/"]
    has_alias = any(container_env.get(key) for key in history.CHANNEL_ALIAS_VARIABLES)
    chosen = [p for p in local if os.path.basename(p) == "conda-forge"] or ([] if has_alias else local)
    if not chosen:
        return dict(container_env)
    env = {k: v for k, v in container_env.items() if k not in history.CHANNEL_ALIAS_VARIABLES}
    return {**env, "MAMBA_CHANNEL_ALIAS": f"file://{os.path.dirname(chosen[0])}"}


def read_conda_meta(meta: history.EnvMeta) -> list[Package]:
    """An env's installed packages, from its metadata (:meth:`EnvOperations.env_meta`)."""
    packages = [
        Package(
            record.get("name", ""),
            record.get("version", ""),
            record.get("build", ""),
            history.short_channel(record.get("channel", "")),
        )
        for record in meta.installed_records()
    ]
    return sorted(packages, key=lambda p: p.name)


class EnvOperations:
    """The operations, bound to one configuration and this server's instances."""

    def __init__(self, config: CondaTainerConfig, instances: InstanceManager | None = None):
        self.config = config
        self.instances = instances or InstanceManager.for_config(config)

    @property
    def journal(self) -> Journal:
        """Intent records of running operations, so a restarted server can say what became of them."""
        return Journal(Path(self.config.state_dir) / "jupyter-condatainer" / "journal")

    # -- lookup --------------------------------------------------------------------------

    def catalog(self) -> Catalog:
        """The images as they are now: scanned at every call, since other processes add and remove them."""
        return scan(self.config.image_dirs, self.config.distro)

    def find(self, name: str) -> Overlay:
        """An image by its exact catalog name; names never reach the filesystem as paths."""
        name = names.normalize(name)
        catalog = self.catalog()
        if name not in catalog.by_name:
            raise OverlayNotFoundError(name, catalog.dirs, catalog.suggestions(name))
        return catalog.by_name[name]

    def find_env(self, name: str) -> Overlay:
        """Like :meth:`find`, for an operation on packages: only an ``.img`` env has packages that change."""
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

    def holder(self, path: str) -> str:
        """Who has the image at ``path`` open, in words (for "in use" refusals)."""
        return holder(self.instances.store, path)

    def busy_reason(self, name: str) -> str | None:
        """Why a change of the env cannot run now (another container has it mounted: a kernel of
        another server, ``condatainer exec``), or None. Blocking (reads locks): call it in a thread."""
        overlay = self.find_env(name)
        if self.mounted_by(overlay) is not None:
            return None  # our kernel's instance: the change runs through it
        if self.instances.warm_mounting(overlay.path):
            return None  # an idle instance of ours: it is stopped before the change
        if held_by_anyone(overlay.path):
            return in_use_message(overlay.name, self.holder(overlay.path))
        return None

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
        kernels = self.kernels_by_overlay(catalog)
        probe = ImageProbe()
        users = holders(self.instances.store, [o.path for o in catalog.by_name.values()])
        rows, seen = [], set()
        for _, overlay in sorted(catalog.by_name.items()):
            if overlay.path in seen:
                continue  # the default-distro alias of an image already listed
            seen.add(overlay.path)
            # As a container gets them: the newest CondaTainer keeps a build script's #WHATIS, #ENV and
            # #ENVNOTE only in the script it embeds in the .sqf, and writes no sidecar for them.
            meta = probe.overlay_env(overlay)
            try:
                size = os.stat(overlay.path).st_size
            except OSError:
                continue
            in_use = overlay.path in ours or is_locked(overlay.path, locked)
            rows.append(
                OverlayInfo(
                    name=overlay.name,
                    kind=overlay.kind,
                    path=overlay.path,
                    size=size,
                    whatis=meta.whatis,
                    notes=meta.notes,
                    in_use=in_use,
                    kernelspec=kernels[overlay.path][0] if overlay.path in kernels else None,
                    writable=overlay.kind == "img" and os.access(overlay.path, os.W_OK),
                    in_use_by=users.get(overlay.path, ANOTHER_PROGRAM) if in_use else "",
                    kernel_stack=list(kernels[overlay.path][1].overlays) if overlay.path in kernels else [],
                    warnings=list(meta.warnings),
                )
            )
        return rows

    def kernels_by_overlay(self, catalog: Catalog) -> dict[str, tuple[str, StackSpec]]:
        """Image path → the kernelspec whose last overlay is that image, and its stack."""
        found: dict[str, tuple[str, StackSpec]] = {}
        for kernel, spec in KernelspecStore().read_all().items():
            if not spec.overlays:
                continue
            last = spec.overlays[-1]
            overlay = catalog.by_name.get(last) or (Overlay.from_path(last) if os.path.isabs(last) else None)
            if overlay is not None:
                found.setdefault(overlay.path, (kernel, spec))
        return found

    def env_meta(self, overlay: Overlay, destination: str | None = None) -> history.EnvMeta:
        """The env's metadata as it is now: through our kernel's instance when one has it mounted
        (see :mod:`kernel_provider.envs.envmeta`). Blocking: call it in a thread from the event loop."""
        instance = self.mounted_by(overlay)
        return read_env_meta(overlay, instance, self.instances.apptainer if instance else "", destination)

    def packages(self, name: str) -> list[Package]:
        """The env's installed packages as they are now. Blocking."""
        return read_conda_meta(self.env_meta(self.find_env(name)))

    # -- locking and disk space -------------------------------------------------------------

    def env_lock(self, path: str) -> EnvLock:
        """The lock (not taken yet) that every process of this user holds to change the env at ``path``."""
        return EnvLock(env_lock_path(self.config.state_dir, path))

    def try_lock(self, path: str) -> EnvLock:
        """Take the env's lock without waiting; :class:`EnvBusyError` while another operation holds it."""
        try:
            return self.env_lock(path).acquire()
        except EnvBusyError:
            raise EnvBusyError(
                f"another operation on {os.path.basename(path)} is running; try again when it ends"
            ) from None

    def resolve_image(self, overlay: Overlay) -> str:
        """The regular file an env's name stands for, inside an image directory.

        A symlinked ``.img`` is followed once, here: changes go to its target, never over the
        link itself, and only when that target lives in one of the image directories.
        """
        real = os.path.realpath(overlay.path)
        dirs = [os.path.realpath(d) for d in self.config.image_dirs]
        inside = any(os.path.dirname(real) == d for d in dirs)
        if not inside or not stat.S_ISREG(os.lstat(real).st_mode):
            raise OverlayError(
                f"{overlay.name} points to {real}, which is not an image file in an image directory; "
                "changes are refused. Copy the env into an image directory to change it."
            )
        return real

    def check_free_space(self, directory: str, needed_bytes: int, what: str) -> None:
        """Refuse before starting when ``what`` would leave less than ``min_free_mb`` free."""
        free = shutil.disk_usage(directory).free
        reserve = self.config.min_free_mb * MB
        if needed_bytes + reserve > free:
            raise DiskSpaceError(
                f"not enough free space for {what}: it needs {needed_bytes / MB:,.0f} MB and "
                f"{directory} has {free / MB:,.0f} MB free (keeping {self.config.min_free_mb} MB spare). "
                "Free some space or choose a smaller size."
            )

    # -- create --------------------------------------------------------------------------

    def check_create(self, name: str, size_mb: int) -> Path:
        """Refuse a new env before anything runs: a bad or taken name, too big, no room for it.

        Returns the image file it will be. The REST API calls it before queueing the job, so
        the user hears at once; :meth:`create` calls it again when the job starts.
        """
        name = validate_env_name(name)
        size_mb = validate_size(size_mb, self.config.max_env_size_mb)
        check_new_name(name, "img", self.catalog(), installed_kernel_names(), f"{name} (env)")
        target = self.target_dir() / names.filename_for(name, ".img")
        if target.exists():
            raise FileExistsError(f"an image named {name} already exists ({target})")
        self.check_free_space(str(target.parent), size_mb * MB, f"a {size_mb} MB env")
        return target

    async def create(
        self,
        report: Reporter,
        name: str,
        size_mb: int = 1024,
        packages: Sequence[str] = (),
        channels: Sequence[str] = (),
        register_kernel: bool = False,
    ) -> str:
        """Make ``name.img`` with a conda env, built in a temporary file, linked in at the end.

        Until that link the env does not exist; after it, it is complete: a cancel or a crash
        at any step leaves either nothing or the finished env (the temporary file of a dead
        server is removed by :meth:`recover`).
        """
        target = await asyncio.to_thread(self.check_create, name, size_mb)
        packages = validate_specs(list(packages) or list(DEFAULT_PACKAGES))
        channels = validate_channels(channels)
        apptainer = self.config.require_apptainer()
        tmp = workfiles.work_path(target)
        with self.journal.record("create", name, str(target)):
            await self._build(report, apptainer, name, size_mb, packages, channels, target, tmp)
        if register_kernel:
            kernel = await asyncio.to_thread(self.register_kernel, name)
            stack = KernelspecStore().read_all()[kernel].overlays
            also = f" (it also mounts {', '.join(stack[:-1])}: the env has no Python of its own)" if stack[:-1] else ""
            report.log(f"registered kernel {kernel}{also}")
            return f"created {target}; kernel 'CondaTainer: {name} (env)'{also}"
        return f"created {target}"

    async def _build(
        self,
        report: Reporter,
        apptainer: str,
        name: str,
        size_mb: int,
        packages: list[str],
        channels: list[str],
        target: Path,
        tmp: Path,
    ) -> None:
        try:
            await checkpoint("create.overlay")
            report.step(0.05, f"creating a {size_mb} MB ext3 overlay")
            sparse = ["--sparse"] if self.config.sparse_envs else []
            argv = [
                apptainer,
                "overlay",
                "create",
                "--size",
                str(size_mb),
                *sparse,
                "--create-dir",
                ENV_PREFIX,
                str(tmp),
            ]
            rc, lines = await run_logged(argv, report.log, die_with_parent=True)
            if rc != 0:
                raise RuntimeError(failure(f"creating {target.name} (apptainer overlay create)", lines))
            temporary = Overlay.from_path(str(tmp))
            await checkpoint("create.solve")
            report.step(0.15, f"solving and installing {' '.join(packages)}")
            cmd = ["mm-create", "-y", *[a for c in channels for a in ("-c", c)], *packages]
            cmd = history.recorded(cmd, f"create {name} {' '.join(packages)}", current_user(), self.via)
            await self._run_in_oneshot(report, temporary, cmd, channels, what="mm-create")
            await checkpoint("create.clean")
            report.step(0.85, "cleaning the package cache")
            await self._run_in_oneshot(
                report, temporary, ["mm-clean", "-a", "-y", "-q"], channels, what="mm-clean", check=False
            )
            await checkpoint("create.commit")
            report.point_of_no_return()
            report.step(0.95, f"moving {target.name} into place")
            os.chmod(tmp, 0o644)
            await asyncio.to_thread(workfiles.fsync_file, tmp)
            os.link(tmp, target)  # the commit; fails if the name appeared meanwhile: never clobber
            workfiles.fsync_dir(target.parent)
            await checkpoint("create.finish")
        finally:
            workfiles.remove_work_files(tmp)

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

    async def change(
        self, report: Reporter, name: str, verb: str, specs: Sequence[str], channels: Sequence[str] = ()
    ) -> str:
        """``mm-install -y`` / ``mm-remove -y`` / ``mm-update -y`` in an env, safely."""
        if verb not in ("install", "remove", "update"):
            raise ValueError(f"unknown package operation {verb!r}")
        specs = validate_specs(specs)
        channels = validate_channels(channels)
        overlay = await asyncio.to_thread(self.find_env, name)
        cmd = [f"mm-{verb}", "-y", *[a for c in channels for a in ("-c", c)], *specs]
        cmd = history.recorded(cmd, f"{verb} {' '.join(specs)}", current_user(), self.via)
        before: dict[str, str] = {}
        planned: dict = {}
        if verb != "remove":  # a removal frees space; an install or update must fit first
            from kernel_provider.envs.preview import check_room, recheck_room  # preview plans with these operations

            report.step(0.05, "checking that the change fits in the env (the solver's dry run)")
            planned = await check_room(self, overlay, verb, specs, channels)

        async def prepare() -> None:  # under the env lock, just before the change
            if planned:
                await recheck_room(self, overlay, verb, planned)
            before.update((await asyncio.to_thread(self.env_meta, overlay)).versions())

        await self.run_change(report, verb, overlay, cmd, channels, prepare=prepare)
        done = f"{verb} {' '.join(specs)}: done"
        try:
            after = (await asyncio.to_thread(self.env_meta, overlay)).versions()
        except EnvUnreadableError:
            return done  # the change is made; only the note about a new Python could be missing
        note = history.python_gained_note(before, after)
        return f"{done}; {note}" if note else done

    via = "jupyter-condatainer"  # recorded with each revision (the CLI sets its own)

    async def run_change(
        self,
        report: Reporter,
        operation: str,
        overlay: Overlay,
        cmd: list[str],
        channels: Sequence[str] = (),
        binds: Sequence[str] = (),
        prepare: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Run a package command on an env under its lock: in our kernel's instance that has it
        mounted, else on a copy that replaces the env only when the command succeeded; refused
        while another container has it mounted. ``prepare`` runs once the lock is held (checks
        that need it); ``operation`` names the steps (:mod:`.checkpoints`)."""
        await self.instances.stop_warm(image=overlay.path)  # an idle instance gives way
        lock = self.try_lock(overlay.path)
        image = await asyncio.to_thread(os.path.realpath, overlay.path)  # what a commit replaces
        try:
            instance = self.mounted_by(overlay)
            with self.journal.record(operation, overlay.name, image, in_place=instance is not None):
                if prepare is not None:
                    await prepare()
                if instance is not None:
                    await self._run_in_instance(report, instance, cmd, lock)
                else:
                    await self._run_on_copy(report, operation, overlay, cmd, channels, binds)
        finally:
            lock.release()

    async def _run_in_instance(self, report: Reporter, instance: Instance, cmd: list[str], lock: EnvLock) -> None:
        """Change the env in place, in the kernel's instance: no copy, and no stopping halfway.

        The command inherits the env lock, so if this server dies it goes on to its end and the
        next server's sweep waits for it before stopping the instance.
        """
        if instance.oci:
            raise EnvBusyError(
                f"the env is mounted by a running kernel in OCI mode ({instance.name}), which has no instance "
                "to run the change in; stop that kernel first"
            )
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
        rc, lines = await run_logged(argv, report.log, keep_fds=(lock.fileno(),))
        if rc != 0:
            raise RuntimeError(failure(label, lines))

    async def _run_on_copy(
        self,
        report: Reporter,
        operation: str,
        overlay: Overlay,
        cmd: list[str],
        channels: Sequence[str],
        binds: Sequence[str] = (),
    ) -> None:
        """Run a package command in a one-shot container on a copy of the env (:meth:`change_on_copy`)."""
        label = history.command_label(cmd)

        async def run(work: Path) -> None:
            report.step(0.2, f"running {label}")
            await self._run_in_oneshot(report, Overlay.from_path(str(work)), cmd, channels, what=label, binds=binds)

        await self.change_on_copy(report, operation, overlay, run)

    async def change_on_copy(
        self,
        report: Reporter,
        operation: str,
        overlay: Overlay,
        change: Callable[[Path], Awaitable[None]],
    ) -> None:
        """Change a copy of the env and rename it over the env only when the change succeeded.

        The env itself is never written: until the rename (atomic, in the same directory) it is
        byte-for-byte as before, after it the finished result. Apptainer's own write lock is held
        on the env throughout, so no container can mount it meanwhile; the copy of a killed
        server is removed by :meth:`recover`, and its container dies with the server. ``change``
        gets the copy's path; ``operation`` names the steps (:mod:`.checkpoints`).
        """
        image = self.resolve_image(overlay)
        with ImageWriteHold(image, self.holder):
            self.check_free_space(
                os.path.dirname(image), workfiles.allocated_bytes(image), f"a working copy of {overlay.name}"
            )
            work = workfiles.work_path(Path(image))
            try:
                await checkpoint(f"{operation}.copy")
                report.step(0.1, "copying the env (the original stays untouched until the change succeeds)")
                copy = ["cp", "--sparse=always", "--reflink=auto", "--preserve=all", image, str(work)]
                rc, lines = await run_logged(copy, report.log, die_with_parent=True)
                if rc != 0:
                    raise DiskSpaceError(
                        f"could not copy {overlay.name} (is the disk full?); the env is unchanged:\n"
                        + output_tail(lines)
                    )
                await checkpoint(f"{operation}.run")
                await change(work)
                await checkpoint(f"{operation}.commit")
                report.point_of_no_return()
                report.step(0.95, f"replacing {overlay.name} with the changed copy")
                await asyncio.to_thread(workfiles.fsync_file, work)
                os.rename(work, image)  # the commit
                workfiles.fsync_dir(Path(image).parent)
                await checkpoint(f"{operation}.finish")
            finally:
                workfiles.remove_work_files(work)

    async def _run_in_oneshot(
        self,
        report: Reporter,
        overlay: Overlay,
        cmd: list[str],
        channels: Sequence[str],
        what: str,
        check: bool = True,
        binds: Sequence[str] = (),
    ) -> None:
        request = StackRequest(
            overlays=[overlay.path],
            writable=True,
            env=channel_env(channels, self.config.container_env),
            binds=[*channel_binds(channels), *binds],
        )
        async with self.oneshot(request, cmd) as (argv, plan):
            check_fakeroot(plan)
            rc, lines = await run_logged(argv, report.log, die_with_parent=True)
        if rc != 0 and check:
            raise RuntimeError(failure(what, lines) + fakeroot_hint(plan))

    async def prepare_oneshot(self, request: StackRequest, env_file_name: str) -> OneShot:
        """A one-shot container of ``request``, planned, in SingularityCE's OCI mode when that is
        in use, with its env file written as ``env_file_name`` in the runtime directory (the
        caller removes it: a terminal's outlives this call)."""
        plan = await asyncio.to_thread(plan_for_host, request, self.config)
        runtime = await self.instances.runtime()
        oci = runtime.oci_mode(option=self.config.oci)
        env_file = write_private(runtime_dir() / env_file_name, command.render_env_file(plan.env, oci=oci))
        return OneShot(runtime.binary, plan, env_file, oci)

    @asynccontextmanager
    async def oneshot(self, request: StackRequest, cmd: list[str]) -> AsyncIterator[tuple[list[str], ContainerPlan]]:
        """The argv of a one-shot container of ``request`` running ``cmd``, and its plan
        (:meth:`prepare_oneshot`). Its env file is removed after."""
        container = await self.prepare_oneshot(request, f"oneshot-{os.getpid()}-{id(request)}.env")
        try:
            yield container.argv(cmd), container.plan
        finally:
            container.env_file.unlink(missing_ok=True)

    # -- recovery ------------------------------------------------------------------------

    def recover(self) -> Recovery:
        """Say what became of operations a killed server left, and remove their work files.

        Every change is built in a hidden work file named after its builder
        (``.NAME.PID-START.rand.tmp.img``, also ``.sqf``, ``.stage`` and the files a tool makes
        next to them); an env itself only changes by the final rename, link or unlink. So a
        dead builder's files are simply removed, and its journal record tells whether its env is
        as before or finished. Work files still mounted by a container are left for a later start.
        """
        recovery = Recovery()
        for file, entry in self.journal.interrupted():
            recovery.outcomes.append(entry.outcome())
            file.unlink(missing_ok=True)
        locked = locked_files()
        for directory in self.config.image_dirs:
            if not os.access(directory, os.W_OK):
                continue
            for path in sorted(Path(directory).glob(".*.tmp.*")):
                owner = workfiles.builder_of(path.name)
                if owner is None or owner.is_alive() or is_locked(str(path), locked):
                    continue
                workfiles.remove_half_placed_sidecar(path)
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                recovery.removed.append(str(path))
            for snapshot in Path(directory).glob(".*.img.snapshot"):
                recovery.outcomes.append(
                    f"found {snapshot}, a snapshot left by an older version of jupyter-condatainer; it was "
                    "not restored (it may be incomplete): compare it with the env and remove it by hand"
                )
        self._remove_stale_locks()
        return recovery

    def _remove_stale_locks(self) -> None:
        """Lock files of dead holders (a lock is free once its holder died; its file stays)."""
        directory = Path(lock_dir(self.config.state_dir))
        for path in directory.glob("*.lock") if directory.is_dir() else ():
            EnvLock(str(path)).is_taken()  # a free lock is taken and released, which removes its file

    # -- delete --------------------------------------------------------------------------

    async def delete(self, name: str) -> None:
        """Remove an image and its sidecar — refused while anyone uses it.

        A symlinked image loses only its link (and the link's sidecar); the file it points to
        stays. The unlink is the one step: before it nothing changed, after it the env is gone.
        """
        overlay = await asyncio.to_thread(self.find, name)
        if overlay.kind == "sif":
            raise OverlayError("base images are managed by CondaTainer; remove them with the condatainer CLI")
        await self.instances.stop_warm(image=overlay.path)  # an idle instance gives way
        if self.mounted_by(overlay) or await asyncio.to_thread(held_by_anyone, overlay.path):
            who = await asyncio.to_thread(self.holder, overlay.path)
            raise EnvBusyError(in_use_message(f"{name} cannot be deleted: it", who, "shut that down first"))
        lock = self.try_lock(overlay.path)
        try:
            with self.journal.record("delete", name, overlay.path):
                await checkpoint("delete.unlink")
                await asyncio.to_thread(self._unlink_image, overlay)
                await checkpoint("delete.finish")
        finally:
            lock.release()
        await asyncio.to_thread(self._forget_kernels, name, overlay.path)

    def _unlink_image(self, overlay: Overlay) -> None:
        if overlay.kind == "img" and not os.path.islink(overlay.path):
            with ImageWriteHold(overlay.path, self.holder):  # no container may mount it while it goes
                os.unlink(overlay.path)
        else:
            os.unlink(overlay.path)
        Path(overlay.sidecar_path).unlink(missing_ok=True)

    @staticmethod
    def _forget_kernels(name: str, path: str) -> None:
        store = KernelspecStore()
        for kernel, spec in store.read_all().items():
            if spec.overlays and spec.overlays[-1] in (name, path):
                store.remove(kernel)


def current_user() -> str:
    """Who a revision is recorded for: this process's user."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return os.environ.get("USER") or str(os.getuid())


@dataclass
class Recovery:
    """What :meth:`EnvOperations.recover` found: messages for the user, files removed."""

    outcomes: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class OneShot:
    """A one-shot container, ready to run commands in (:meth:`EnvOperations.prepare_oneshot`)."""

    binary: str
    plan: ContainerPlan
    env_file: Path
    oci: bool

    def argv(self, cmd: Sequence[str], pwd: str = "", quiet: bool = False) -> list[str]:
        """``cmd`` in this container (:func:`~kernel_provider.model.command.oneshot_exec_argv`)."""
        return command.oneshot_exec_argv(
            self.binary, self.plan, str(self.env_file), cmd, pwd, oci=self.oci, quiet=quiet
        )


class DiskSpaceError(OSError):
    """An operation would not fit in the free space it needs (the image directory's, or an env's)."""


MB = 1024 * 1024


def as_json(rows) -> list[dict]:
    """Listing rows (dataclasses) as the REST API sends them."""
    return [asdict(row) for row in rows]
