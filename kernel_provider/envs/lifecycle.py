"""An env's lifecycle on top of :mod:`.operations`: history, export/lock, rollback (freeze: :mod:`.freeze`).

One implementation for the REST API, the CLI and the panel. Reading (history, export) goes through
:mod:`kernel_provider.envs.envmeta`: the running kernel's instance when one has the env mounted, else
``debugfs`` on the ``.img`` (refused while another container has it open read-write). A rollback is a
package change like an install — the env lock, our kernel's instance when one has the env mounted,
else a one-shot container on a copy that replaces the env when it succeeded, refused while another
container has the env mounted — that runs ``mm-install --explicit LOCK`` with the lock of the wanted
revision, so the env ends with exactly that revision's packages (no solve), recorded as a new revision.
"""

from __future__ import annotations

import asyncio
import os
import secrets

from kernel_provider.envs.operations import EnvOperations, Reporter, current_user
from kernel_provider.host.runtime import runtime_dir, write_private
from kernel_provider.incontainer import history
from kernel_provider.incontainer.history import EnvMeta, Revision

EXPORT_FORMATS = ("yml", "lock")


class Unchanged(Exception):
    """The env already holds the wanted package set."""


class Lifecycle:
    """History, export and rollback of the ``.img`` envs of one :class:`EnvOperations`."""

    def __init__(self, operations: EnvOperations, via: str = "jupyter-condatainer"):
        self.ops = operations
        self.via = via

    # -- reading ---------------------------------------------------------------------------

    def meta(self, name: str) -> EnvMeta:
        """The env's ``conda-meta`` (history, sidecar, package records) as it is now. Blocking."""
        return self.ops.env_meta(self.ops.find_env(name))

    def history(self, name: str) -> list[Revision]:
        """The env's revisions, oldest first (revision 0 made the env). Blocking."""
        return self.meta(name).revisions()

    def export(self, name: str, fmt: str = "yml", revision: int | str | None = None) -> tuple[str, str]:
        """``(file name, text)`` of an ``environment.yml`` or an ``@EXPLICIT`` lock of a revision."""
        if fmt not in EXPORT_FORMATS:
            raise ValueError(f"unknown export format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}")
        overlay = self.ops.find_env(name)
        meta = self.meta(name)
        rev = history.select(meta.revisions(), revision)
        stem = f"{overlay.name.replace('/', '-')}-rev{rev.number}"
        if fmt == "yml":
            return f"{stem}.yml", history.render_environment_yml(overlay.name, rev, meta.channels, self._alias())
        return f"{stem}.lock.txt", history.render_explicit(overlay.name, rev, meta)

    def _alias(self) -> str:
        env = self.ops.config.container_env
        return history.channel_alias(env)

    def check_revision(self, name: str, revision) -> Revision:
        """The revision, or :class:`HistoryError` (unknown revision, unlockable packages)."""
        meta = self.meta(name)
        rev = history.select(meta.revisions(), revision)
        history.render_explicit(name, rev, meta)
        return rev

    # -- rollback --------------------------------------------------------------------------

    async def rollback(self, report: Reporter, name: str, revision: int | str) -> str:
        """Make the env hold exactly the packages of ``revision``; recorded as a new revision."""
        overlay = await asyncio.to_thread(self.ops.find_env, name)
        lock_file = runtime_dir() / f"rollback-{os.getpid()}-{secrets.token_hex(4)}.txt"
        base = ["mm-install", "-y", "--explicit", str(lock_file)]
        cmd = history.recorded(base, f"rollback to revision {revision}", current_user(), self.via)
        target: dict = {}
        binds = [str(runtime_dir())]

        async def prepare() -> None:  # under the env lock: nothing changes the history meanwhile
            report.step(0.05, f"reading the history of {overlay.name}")
            meta = await asyncio.to_thread(self.meta, name)
            revisions = meta.revisions()
            rev = history.select(revisions, revision)
            text = history.render_explicit(overlay.name, rev, meta)
            current = revisions[-1]
            if current.package_set() == rev.package_set() and current.requested == rev.requested:
                raise Unchanged(f"{overlay.name} already holds the packages of revision {rev.number}")
            write_private(lock_file, text)
            binds.extend(history.local_channel_dirs(text))
            cmd.extend(a for spec in rev.requested.values() for a in ("--requested", spec))
            target["revision"] = rev
            report.log(f"rolling back to revision {rev.number} ({rev.time}): {len(rev.packages)} packages")

        try:
            await self.ops.run_change(report, "rollback", overlay, cmd, binds=binds, prepare=prepare)
        except Unchanged as unchanged:
            return str(unchanged)
        finally:
            lock_file.unlink(missing_ok=True)
        rev = target["revision"]
        after = await asyncio.to_thread(self.history, name)
        if not after or after[-1].package_set() != rev.package_set():
            raise RuntimeError(
                f"the rollback of {overlay.name} ran, but its packages differ from revision {rev.number}"
            )
        return f"rolled back {overlay.name} to revision {rev.number} (now revision {after[-1].number})"
