"""Preview a package change: the solver's plan for an install, update or remove, changing nothing.

CondaTainer's wrappers take micromamba's ``--dry-run --json``; the answer is read by
:mod:`kernel_provider.incontainer.txplan` (the magic reads it the same way). The dry run runs
where the change would: in our kernel's instance when one has the env mounted writable, else in a
one-shot container that mounts the env **read-only** under a throw-away tmpfs (the solver
writes its repodata cache; none of it reaches the image). So a preview needs neither the
env's lock nor a copy, and never waits for a running change.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence

from kernel_provider.envs.disk import DiskError, read_usage
from kernel_provider.envs.operations import EnvOperations, channel_binds
from kernel_provider.host.containers import plan_for_host
from kernel_provider.host.process import output_tail, run
from kernel_provider.host.runtime import runtime_dir, write_private
from kernel_provider.incontainer import txplan
from kernel_provider.incontainer.constants import ENV_PREFIX
from kernel_provider.model import command
from kernel_provider.model.plan import StackRequest

PREVIEW_TIMEOUT = 300.0  # a solve against a large channel can take minutes
VERBS = ("install", "update", "remove")


class PreviewError(ValueError):
    """The solver could not plan the change (unknown package, conflict): nothing would change."""


def dry_run_command(verb: str, specs: Sequence[str], channels: Sequence[str]) -> list[str]:
    """``mm-VERB -y --dry-run --json [-c CH]… SPEC…`` (``remove`` takes no channels)."""
    if verb not in VERBS:
        raise ValueError(f"cannot preview {verb!r}; only {', '.join(VERBS)}")
    channel_args = [] if verb == "remove" else [a for c in channels for a in ("-c", c)]
    return [f"mm-{verb}", "-y", "--dry-run", "--json", *channel_args, *specs]


async def preview(
    operations: EnvOperations, name: str, verb: str, specs: Sequence[str], channels: Sequence[str] = ()
) -> dict:
    """The plan of ``verb specs`` on the env ``name`` (see :func:`txplan.parse_transaction`), with
    ``env``, ``verb``, the env's free space and a ``space_warning`` when the change would not fit;
    :class:`PreviewError` with the solver's message when it cannot be planned."""
    overlay = await asyncio.to_thread(operations.find_env, name)
    cmd = dry_run_command(verb, specs, channels)
    instance = operations.mounted_by(overlay)
    if instance is not None and instance.plan.writable:  # a read-only mount has no CNT_CONDA_PREFIX
        argv = command.instance_exec_argv(operations.instances.apptainer, instance.name, str(instance.env_file), cmd)
        result = await run(argv, PREVIEW_TIMEOUT)
    else:
        request = StackRequest(
            overlays=[overlay.path],
            writable=False,
            # The wrappers act on CNT_CONDA_PREFIX, which CondaTainer sets for writable mounts only.
            env={**operations.config.container_env, "CNT_CONDA_PREFIX": ENV_PREFIX},
            binds=channel_binds(channels),
            flags=["--writable-tmpfs"],
        )
        plan = await asyncio.to_thread(plan_for_host, request, operations.config)
        env_file = write_private(
            runtime_dir() / f"preview-{os.getpid()}-{id(request)}.env", command.render_env_file(plan.env)
        )
        try:
            argv = command.oneshot_exec_argv(operations.config.require_apptainer(), plan, str(env_file), cmd)
            result = await run(argv, PREVIEW_TIMEOUT)
        finally:
            env_file.unlink(missing_ok=True)
    if result.returncode != 0:
        raise PreviewError(
            f"the solver could not plan '{verb} {' '.join(specs)}' on {overlay.name}; nothing was changed:\n"
            + output_tail(result.stderr.splitlines())
        )
    plan = txplan.parse_transaction(result.stdout)
    try:
        free = (await asyncio.to_thread(read_usage, overlay.path)).free
    except (OSError, DiskError):
        free = -1  # unknown: no warning
    warning = txplan.space_warning(plan, free) if free >= 0 else ""
    return {
        "env": overlay.name,
        "verb": verb,
        "specs": list(specs),
        **plan,
        "env_free_bytes": free,
        "space_warning": warning,
    }
