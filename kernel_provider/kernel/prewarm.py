"""Stacks warm before their first notebook.

When the server starts, a kernel of each chosen stack starts and shuts down in the background:
its instance stays warm with its fork server (the provisioner's ``warm_timeout``/``warm_limit``),
so the first notebook of the day on that stack gets a fork instead of a cold start. Chosen: the
kernelspecs named in ``CondaTainerExtension.prewarm`` and the ones whose kernels started most
recently (``prewarm_recent``), which every local CondaTainer kernel start records in the state
directory (:func:`note`). The kernel is not one of the server's: no client sees it.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

from jupyter_client.kernelspec import NoSuchKernel

from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.host.runtime import write_private

RECENT_FILE = "recent-kernels.json"
KEEP = 8  # kernelspec names remembered
PROVISIONER = "condatainer-provisioner"  # only local kernels' instances stay warm


def _recent_path(config: CondaTainerConfig) -> Path:
    return Path(config.state_dir) / RECENT_FILE


def recent(config: CondaTainerConfig) -> list[str]:
    """Kernelspec names of the latest local CondaTainer kernel starts, the latest first."""
    try:
        names = json.loads(_recent_path(config).read_text())
    except (OSError, ValueError):
        return []
    return [name for name in names if isinstance(name, str)] if isinstance(names, list) else []


def note(config: CondaTainerConfig, kernel_name: str) -> None:
    """Record a kernel start (blocking: a small file). Two servers writing at once lose one
    name at worst: the list only chooses what to warm."""
    latest = recent(config)
    if not kernel_name or latest[:1] == [kernel_name]:
        return  # nothing to record, or already the latest: no write on every start of the same kernel
    names = [kernel_name, *(name for name in latest if name != kernel_name)][:KEEP]
    path = _recent_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, json.dumps(names))


def chosen(named: Sequence[str], latest: Sequence[str], count: int) -> list[str]:
    """The kernelspecs to warm: the named ones, then the ``count`` latest, each once."""
    names: list[str] = []
    for name in [*named, *latest[: max(count, 0)]]:
        if name not in names:
            names.append(name)
    return names


async def prewarm(kernel_manager, names: Sequence[str], root_dir: str, log: logging.Logger) -> list[str]:
    """Start and shut down a kernel of each local CondaTainer kernelspec in ``names`` with the
    server's MultiKernelManager as parent (its root directory, connection directory and
    configuration), one after the other; the names warmed. A failure is logged, never raised."""
    warmed = []
    for name in names:
        try:
            spec = kernel_manager.kernel_spec_manager.get_kernel_spec(name)
        except NoSuchKernel:
            log.info("CondaTainer pre-warm: no kernelspec %s (skipped)", name)
            continue
        provisioner = spec.metadata.get("kernel_provisioner", {})
        if provisioner.get("provisioner_name") != PROVISIONER or provisioner.get("config", {}).get("writable"):
            continue  # a SLURM job, or a writable env (it never stays warm)
        kernel_id = str(uuid.uuid4())
        km = kernel_manager.kernel_manager_factory(
            connection_file=os.path.join(kernel_manager.connection_dir, f"kernel-{kernel_id}.json"),
            parent=kernel_manager,
            log=log,
            kernel_name=name,
            kernel_spec_manager=kernel_manager.kernel_spec_manager,
        )
        try:
            await km.start_kernel(cwd=root_dir)
            await km.shutdown_kernel(now=False)
            warmed.append(name)
        except Exception as err:  # noqa: BLE001 - a warm instance is a nicety; the server starts anyway
            log.warning("CondaTainer pre-warm of %s failed: %s", name, err)
            if km.has_kernel:
                await km.shutdown_kernel(now=True)
    return warmed
