"""Freeze an env (or one of its revisions) into a read-only ``name--version.sqf`` overlay.

CondaTainer's layout: the SquashFS holds ``cnt/<name>/<version>/…`` (mounted at
``/cnt/<name>/<version>``, its ``bin/`` on PATH), next to it an ``<file>.env`` sidecar whose
``#WHATIS`` names the source env and revision, and inside it a ``.cnt-build-script`` with the same
description and ``#ENV:CONDA_PREFIX=$app_root``.

conda envs are not relocatable in general (text files carry their prefix), so the frozen env is
not a copy of ``/ext3/env``: the revision's ``@EXPLICIT`` lock is installed with the wrappers
(``mm-create -f LOCK``, no solve: exactly the revision's packages) into the prefix
``/cnt/<name>/<version>`` itself, inside a one-shot container of the base image with a staging
directory bound there. ``mksquashfs`` packs it into a temporary file next to the target, which is
linked into place at the end (never over an existing image), so a failure or a cancel leaves
nothing behind; what a killed server leaves is removed by :meth:`EnvOperations.recover`.
Activation scripts (``etc/conda/{activate,deactivate}.d``) and ``conda env config vars``
(``conda-meta/state``) of the env are carried over when the latest revision is frozen.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kernel_provider.envs import workfiles
from kernel_provider.envs.checkpoints import checkpoint
from kernel_provider.envs.operations import EnvOperations, Reporter, current_user
from kernel_provider.envs.workfiles import fsync_dir, fsync_file
from kernel_provider.host.containers import plan_for_host
from kernel_provider.host.process import apptainer_env, failure, run_logged, stream
from kernel_provider.host.runtime import write_private
from kernel_provider.incontainer import history
from kernel_provider.incontainer.history import EnvMeta, Revision
from kernel_provider.kernel.kernelspecs import (
    KernelspecStore,
    custom_spec,
    installed_kernel_names,
)
from kernel_provider.model import command, names
from kernel_provider.model.overlays import Overlay
from kernel_provider.model.plan import StackRequest
from kernel_provider.model.validation import check_new_name, validate_env_name

ACTIVATION_DIRS = ("activate.d", "deactivate.d")


@dataclass(frozen=True)
class FreezeTarget:
    """A checked freeze request: the env it comes from and the ``.sqf`` it becomes."""

    source: Overlay
    name: str  # "frozen/1.0"
    path: Path  # …/frozen--1.0.sqf

    @property
    def prefix(self) -> str:
        """Where the frozen env is mounted, and so where it is built: a conda env cannot be moved."""
        return f"/cnt/{self.name}"


def check_target(ops: EnvOperations, source: str, name: str, version: str) -> FreezeTarget:
    """Validate a freeze request; :class:`FileExistsError` when the overlay name is taken or would
    collide with, shadow or be shadowed by another image or kernelspec."""
    overlay = ops.find_env(source)
    if not isinstance(name, str) or not isinstance(version, str) or not name or not version:
        raise ValueError("a frozen overlay needs a name and a version (e.g. name 'myenv', version '1.0')")
    full = validate_env_name(f"{name}/{version}")
    if "/" in name or "/" in version:
        raise ValueError(f"invalid name or version {name!r}/{version!r}: no '/' inside either")
    target = ops.target_dir() / names.filename_for(full, ".sqf")
    catalog = ops.catalog()
    existing = catalog.by_name.get(full)
    if target.exists() or os.path.exists(f"{target}.env") or existing is not None:
        where = existing.path if existing is not None else str(target)
        raise FileExistsError(f"an overlay named {full} already exists ({where}); pick another name or version")
    check_new_name(full, "sqf", catalog, installed_kernel_names(), kernel_label(full))
    return FreezeTarget(overlay, full, target)


async def freeze(
    ops: EnvOperations,
    report: Reporter,
    source: str,
    name: str,
    version: str,
    revision: int | str | None = None,
    register_kernel: bool = True,
) -> str:
    """Build ``name--version.sqf`` from ``source``'s revision (default: the latest).

    Steps (each a checkpoint): read the revision, install its packages into a staging tree, pack
    the tree, commit. Until the commit, everything lives in work files next to the target.
    """
    target = await asyncio.to_thread(check_target, ops, source, name, version)
    for image in (target.source.path, str(target.path)):  # an idle instance must not hold either
        await ops.instances.stop_warm(image=image)
    tmp_sqf = workfiles.work_path(target.path)
    stage = tmp_sqf.with_suffix(".stage")
    with ops.journal.record("freeze", target.name, str(target.path)):
        try:
            meta, rev = await _read_revision(ops, report, target, stage / "source", revision)
            await _build_tree(ops, report, target, stage, meta, rev)
            await checkpoint("freeze.pack")
            report.step(0.8, f"packing {target.path.name}")
            await _mksquashfs(report, stage / "root", tmp_sqf)
            await _commit(report, target, rev, tmp_sqf)
            await checkpoint("freeze.finish")
        finally:
            workfiles.remove_work_files(tmp_sqf)  # and its sidecar
            await asyncio.to_thread(shutil.rmtree, stage, True)
    message = f"froze {target.source.name} revision {rev.number} into {target.path}"
    if register_kernel:
        kernel = await asyncio.to_thread(register_frozen_kernel, ops, target.name, "python" in rev.packages)
        if kernel:
            report.log(f"registered kernel {kernel}")
            message += f" (kernel {kernel})"
    return message


async def _read_revision(
    ops: EnvOperations, report: Reporter, target: FreezeTarget, meta_dir: Path, revision: int | str | None
) -> tuple[EnvMeta, Revision]:
    """The source env's metadata (copied into ``meta_dir``) and the revision to freeze.

    The env lock only while reading: an install running now makes the freeze fail at once.
    """
    await checkpoint("freeze.read")
    report.step(0.05, f"reading the history of {target.source.name}")
    lock = ops.try_lock(target.source.path)
    try:
        await asyncio.to_thread(meta_dir.mkdir, parents=True)
        meta = await asyncio.to_thread(ops.env_meta, target.source, str(meta_dir))
    finally:
        lock.release()
    return meta, history.select(meta.revisions(), revision)


async def _build_tree(
    ops: EnvOperations, report: Reporter, target: FreezeTarget, stage: Path, meta: EnvMeta, rev: Revision
) -> None:
    """``stage/root/cnt/<name>/<version>``: the revision's packages, its activation, its description."""
    lock_text = history.render_explicit(target.source.name, rev, meta)
    lock_file = stage / "explicit.txt"
    app = stage / "root" / "cnt" / target.name
    await asyncio.to_thread(lock_file.write_text, lock_text)
    await asyncio.to_thread(app.mkdir, parents=True)
    await checkpoint("freeze.install")
    report.step(0.15, f"installing revision {rev.number}'s {len(rev.packages)} packages at {target.prefix}")
    await _install(ops, report, target, app, lock_file, lock_text, rev)
    if rev.number == meta.revisions()[-1].number:
        _carry_activation(stage / "source", app, report)
    _describe(app, target, rev)


async def _commit(report: Reporter, target: FreezeTarget, rev: Revision, tmp_sqf: Path) -> None:
    """Link the sidecar, then the image (the commit); on failure remove what was linked.

    A builder killed between the two links leaves its work files behind, which lets recovery
    remove the lone sidecar too.
    """
    await checkpoint("freeze.commit")
    report.point_of_no_return()
    report.step(0.95, f"moving {target.path.name} into place")
    sidecar = Path(f"{target.path}.env")
    tmp_env = tmp_sqf.with_name(tmp_sqf.name + ".env")
    os.chmod(tmp_sqf, 0o644)
    tmp_env.write_text(_sidecar_text(target, rev))
    os.chmod(tmp_env, 0o644)
    await asyncio.to_thread(fsync_file, tmp_sqf)
    placed: list[Path] = []
    try:
        os.link(tmp_env, sidecar)  # never clobber: fails if the name appeared meanwhile
        placed.append(sidecar)
        os.link(tmp_sqf, target.path)  # the commit
    except BaseException as err:
        for path in placed:
            path.unlink(missing_ok=True)
        if isinstance(err, FileExistsError):
            raise FileExistsError(f"an overlay named {target.name} appeared meanwhile; nothing was changed") from None
        raise
    fsync_dir(target.path.parent)


async def _install(
    ops: EnvOperations,
    report: Reporter,
    target: FreezeTarget,
    app: Path,
    lock_file: Path,
    lock_text: str,
    rev: Revision,
) -> None:
    """``mm-create -f LOCK`` with the prefix at ``/cnt/<name>/<version>`` (the staging dir bound there)."""
    config = ops.config
    request = StackRequest(
        overlays=[],
        env={**config.container_env, "CNT_CONDA_PREFIX": target.prefix},
        binds=[f"{app}:{target.prefix}", str(lock_file.parent), *history.local_channel_dirs(lock_text)],
    )
    plan = await asyncio.to_thread(plan_for_host, request, config)
    requested = [a for spec in rev.requested.values() for a in ("--requested", spec)]
    script = 'mm-create "$@" && mm-clean -a -y -q'
    cmd = ["sh", "-c", script, "sh", "-y", "-f", str(lock_file), *requested]
    with tempfile.TemporaryDirectory(prefix="jct-freeze-") as tmp:
        env_file = write_private(Path(tmp) / "oneshot.env", command.render_env_file(plan.env))
        argv = command.oneshot_exec_argv(config.require_apptainer(), plan, str(env_file), cmd)
        rc, lines = await run_logged(argv, report.log, die_with_parent=True)
    if rc != 0:
        raise RuntimeError(failure(f"installing revision {rev.number} at {target.prefix} (mm-create -f)", lines))
    for leftover in ("pkgs", "CACHEDIR.TAG"):
        path = app / leftover
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()


def _carry_activation(meta_dir: Path, app: Path, report: Reporter) -> None:
    """The env's own activation scripts and ``conda env config vars`` (not part of any package)."""
    for sub in ACTIVATION_DIRS:
        source = meta_dir / "etc" / "conda" / sub
        if not source.is_dir():
            continue
        destination = app / "etc" / "conda" / sub
        destination.mkdir(parents=True, exist_ok=True)
        for script in sorted(source.iterdir()):
            if script.is_file() and not (destination / script.name).exists():
                shutil.copy2(script, destination / script.name)
                os.chmod(destination / script.name, 0o755 if os.access(script, os.X_OK) else 0o644)
                report.log(f"carried over etc/conda/{sub}/{script.name}")
    state = meta_dir / "conda-meta" / "state"
    if state.is_file():
        try:
            env_vars = json.loads(state.read_text()).get("env_vars") or {}
        except (OSError, ValueError, AttributeError):
            env_vars = {}
        if env_vars:
            (app / "conda-meta" / "state").write_text(json.dumps({"env_vars": env_vars}, indent=2) + "\n")
            report.log(f"carried over the env's variables: {', '.join(sorted(env_vars))}")


def kernel_label(name: str) -> str:
    """The label of the kernel a freeze registers for the overlay ``name`` (its kernelspec name follows from it)."""
    return f"{name} (frozen)"


def whatis(target: FreezeTarget, rev: Revision) -> str:
    """The description (``#WHATIS``) of a frozen overlay: which env and revision it holds."""
    return f"conda env {target.source.name} revision {rev.number} ({rev.time}), frozen read-only"


def _describe(app: Path, target: FreezeTarget, rev: Revision) -> None:
    """The embedded ``.cnt-build-script`` CondaTainer reads, and our provenance record."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    script = [
        "#!/bin/bash",
        f"#WHATIS:{whatis(target, rev)}",
        "#ENV:CONDA_PREFIX=$app_root",
        "#ENVNOTE:CONDA_PREFIX=the frozen conda env (read-only)",
        f"# Frozen by jupyter-condatainer on {now} by {current_user()} from {target.source.path},",
        f"# revision {rev.number}: mm-create -f <lock>, the lock being these packages:",
        *[f"#   {d.name}={d.version}={d.build}" for _, d in sorted(rev.packages.items())],
    ]
    (app / ".cnt-build-script").write_text("\n".join(script) + "\n")
    provenance = {
        "source": target.source.name,
        "source_path": target.source.path,
        "revision": rev.number,
        "revision_time": rev.time,
        "frozen": now,
        "user": current_user(),
    }
    sidecar_dir = app / "conda-meta" / history.SIDECAR_DIR
    sidecar_dir.mkdir(parents=True, exist_ok=True)
    (sidecar_dir / "frozen-from.jsonl").write_text(json.dumps(provenance) + "\n")


def _sidecar_text(target: FreezeTarget, rev: Revision) -> str:
    return (
        f"#WHATIS:{whatis(target, rev)}\n"
        f"CONDA_PREFIX={target.prefix}\n"
        "#ENVNOTE:CONDA_PREFIX=the frozen conda env (read-only)\n"
    )


async def _mksquashfs(report: Reporter, root: Path, out: Path) -> None:
    mksquashfs = shutil.which("mksquashfs") or shutil.which("mksquashfs", path="/usr/sbin:/sbin")
    if not mksquashfs:
        raise RuntimeError("mksquashfs not found: install squashfs-tools")
    lines: list[str] = []
    argv = [mksquashfs, str(root), str(out), "-all-root", "-noappend", "-no-progress", "-quiet"]
    rc = await stream([*argv, "-comp", "lz4"], lines.append, env=apptainer_env(), die_with_parent=True)
    if rc != 0:  # a mksquashfs without lz4: its default compressor
        lines.clear()
        await asyncio.to_thread(out.unlink, missing_ok=True)
        rc = await stream(argv, lines.append, env=apptainer_env(), die_with_parent=True)
    if rc != 0:
        raise RuntimeError(failure(f"packing {out.name} (mksquashfs)", lines))


def register_frozen_kernel(ops: EnvOperations, name: str, has_python: bool) -> str | None:
    """A kernelspec for the frozen overlay; a Python overlay goes first when it has no python."""
    stack = [name]
    if not has_python:
        pythons = ops.catalog().versions_of("python")
        if not pythons:
            return None
        stack.insert(0, pythons[-1].name)
    spec = custom_spec(stack, label=kernel_label(name))
    KernelspecStore().write(spec)
    return spec.name


__all__ = ["FreezeTarget", "check_target", "freeze", "kernel_label", "register_frozen_kernel", "whatis"]
