"""Preview a package change: the solver's plan for an install, update or remove, changing nothing.

CondaTainer's wrappers take micromamba's ``--dry-run --json``; the command and the reading of
its answer are :mod:`kernel_provider.incontainer.txplan`'s (the magic's ``--dry-run`` uses the
same). The dry run runs where the change would: in our kernel's instance when one has the env
mounted writable, else in a one-shot container that mounts the env **read-only** under a
throw-away tmpfs (the wrappers refuse an env they cannot write). Either way the solver's
repodata goes into a temporary package cache outside the env, so a preview changes nothing in
it, needs neither the env's lock nor a copy, and never waits for a running change.

The same plan stops an install or update that would not fit in the env before it starts
(:func:`check_room`): without it the change would copy the env and fail late, or, in a kernel's
instance, fill the env halfway through linking.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence

from kernel_provider.envs.disk import DiskError, FsUsage, read_usage
from kernel_provider.envs.operations import DiskSpaceError, EnvOperations, channel_binds, channel_env
from kernel_provider.host.containers import check_fakeroot
from kernel_provider.host.locks import held_by_anyone, in_use_message
from kernel_provider.host.probes import ImageProbe
from kernel_provider.host.process import output_tail, run
from kernel_provider.incontainer import txplan
from kernel_provider.incontainer.constants import ENV_PREFIX
from kernel_provider.incontainer.diagnosis import diagnose
from kernel_provider.incontainer.envlock import EnvBusyError
from kernel_provider.model import command
from kernel_provider.model.overlays import Overlay
from kernel_provider.model.plan import StackRequest, needs_fakeroot

PREVIEW_TIMEOUT = 300.0  # a solve against a large channel can take minutes


class PreviewError(ValueError):
    """The solver could not plan the change (unknown package, conflict): nothing would change."""


class EnvSpaceError(DiskSpaceError):
    """A change would not fit in the env's own free space (inside its ``.img``): refused before it started."""


def dry_run_command(verb: str, specs: Sequence[str], channels: Sequence[str]) -> list[str]:
    """:func:`txplan.dry_run_command` with ``[-c CH]… SPEC…`` (``remove`` takes no channels)."""
    channel_args = [] if verb == "remove" else [a for c in channels for a in ("-c", c)]
    return txplan.dry_run_command(verb, [*channel_args, *specs])


async def preview(
    operations: EnvOperations, name: str, verb: str, specs: Sequence[str], channels: Sequence[str] = ()
) -> dict:
    """The plan of ``verb specs`` on the env ``name`` (see :func:`txplan.parse_transaction`), with
    ``env``, ``verb``, the env's free space, what the change is estimated to need and a
    ``space_warning`` (the refusal :func:`check_room` would give) when it would not fit;
    :class:`PreviewError` with the solver's message when it cannot be planned."""
    overlay = await asyncio.to_thread(operations.find_env, name)
    cmd = dry_run_command(verb, specs, channels)
    instance = operations.mounted_by(overlay)
    if instance is not None and instance.plan.writable:  # a read-only mount has no CNT_CONDA_PREFIX
        argv = command.instance_exec_argv(operations.instances.apptainer, instance.name, str(instance.env_file), cmd)
        result = await run(argv, PREVIEW_TIMEOUT)
    else:
        # The wrappers refuse an env they cannot write, so the dry run writes (into the tmpfs) as the
        # change would: a foreign-owned env through --fakeroot, as CondaTainer mounts it writable.
        writes_as_owner = await asyncio.to_thread(needs_fakeroot, overlay, True, ImageProbe(), os.getuid())
        request = StackRequest(
            overlays=[overlay.path],
            writable=False,
            fakeroot=writes_as_owner is not None,
            # The wrappers act on CNT_CONDA_PREFIX, which CondaTainer sets for writable mounts only.
            # As the change itself would: a typed local conda-forge channel stands in for the alias.
            env={**channel_env(channels, operations.config.container_env), "CNT_CONDA_PREFIX": ENV_PREFIX},
            binds=channel_binds(channels),
            flags=["--writable-tmpfs"],
        )
        async with operations.oneshot(request, cmd) as (argv, container):
            check_fakeroot(container)
            result = await run(argv, PREVIEW_TIMEOUT)
    if result.returncode != 0:  # the solver's words, under what they mean when that is known
        found = diagnose(result.stderr)
        first = f"the solver could not plan '{verb} {' '.join(specs)}' on {overlay.name}; nothing was changed"
        raise PreviewError(f"{found.line if found else first}\n{output_tail(result.stderr.splitlines())}")
    plan = txplan.parse_transaction(result.stdout)
    try:
        space = await env_space(operations, overlay)
    except (OSError, DiskError):
        space = None  # unknown: no warning
    return {
        "env": overlay.name,
        "verb": verb,
        "specs": list(specs),
        **plan,
        "env_free_bytes": space.available if space else -1,
        "space_needed_bytes": txplan.space_needed(plan),
        "space_warning": refusal(operations, overlay, verb, plan, space) if space else "",
    }


STATFS_TIMEOUT = 60.0


async def env_space(operations: EnvOperations, overlay: Overlay) -> FsUsage:
    """The env's size and free space now: from its superblock, or, while our kernel's instance has
    it mounted writable, from ``statfs`` in that instance (the superblock lags behind while mounted)."""
    instance = operations.mounted_by(overlay)
    if instance is None or not instance.plan.writable:
        return await asyncio.to_thread(read_usage, overlay.path)
    statfs = ["stat", "-f", "-c", "%S %b %f %a", ENV_PREFIX]
    argv = command.instance_exec_argv(operations.instances.apptainer, instance.name, str(instance.env_file), statfs)
    result = await run(argv, STATFS_TIMEOUT)
    try:
        block, total, free, available = (int(word) for word in result.stdout.split())
    except ValueError:
        raise DiskError(
            f"could not read {overlay.name}'s free space in {instance.name}: {result.stderr.strip()}"
        ) from None
    return FsUsage(total=total * block, free=free * block, reserved=(free - available) * block)


def refusal(operations: EnvOperations, overlay: Overlay, verb: str, plan: dict, space: FsUsage) -> str:
    """Why ``plan`` would not fit in ``space``, and what to do (see :func:`txplan.space_refusal`); "" when it fits."""
    return txplan.space_refusal(
        plan,
        verb=verb,
        env=os.path.basename(overlay.path),
        name=overlay.name,
        total_bytes=space.total,
        free_bytes=space.available,
        in_use=operations.mounted_by(overlay) is not None,
    )


async def check_room(
    operations: EnvOperations, overlay: Overlay, verb: str, specs: Sequence[str], channels: Sequence[str]
) -> dict:
    """Refuse an install or update that would not fit in the env, before anything is copied or
    changed: :class:`EnvSpaceError` whose first line says so and what to do. Returns the plan, for
    :func:`recheck_room` under the env's lock (empty when there is none to check). Needs no lock
    itself (the dry run changes nothing).

    There is no "install anyway". The estimate can be wrong in the refusing direction (a change
    whose packages do not compress needs up to a third less than estimated), but only for an env
    that is within that third of full, and for it growing is cheap and safe: the ``.img`` is
    sparse, so the bigger size costs no disk until it is used, and the grow is made on a copy.
    Installing anyway into a nearly full env is not safe: in a kernel's instance the change is made
    in place, and micromamba running out of space halfway through linking leaves an env that is
    neither as before nor finished; an ordinary user's (FUSE) mount was even seen to hang, not
    fail, when a write filled the env. (The estimate can also be too low, for text-heavy packages: such
    a change starts and fails late, as every change did before this check: on a copy the env stays
    as it was; in a kernel's instance it can still fill the env.)
    """
    # Where the change itself would be refused for the env being in use, that is the answer.
    instance = operations.mounted_by(overlay)
    if instance is not None and instance.oci:
        return {}  # an OCI kernel has no instance to plan in; the change says why it cannot run
    if instance is None and await asyncio.to_thread(held_by_anyone, overlay.path):
        raise EnvBusyError(in_use_message(overlay.name, await asyncio.to_thread(operations.holder, overlay.path)))
    planned = await preview(operations, overlay.name, verb, specs, channels)
    if planned["space_warning"]:
        raise EnvSpaceError(planned["space_warning"])
    return planned


async def recheck_room(operations: EnvOperations, overlay: Overlay, verb: str, plan: dict) -> None:
    """:func:`check_room`'s comparison again, with the free space read anew: under the env's lock,
    just before the change, in case another change took the space since the plan was made (reading
    the space takes a moment; the dry run is not repeated)."""
    try:
        space = await env_space(operations, overlay)
    except (OSError, DiskError):
        return  # as check_room: unknown space refuses nothing
    message = refusal(operations, overlay, verb, plan, space)
    if message:
        raise EnvSpaceError(message)
