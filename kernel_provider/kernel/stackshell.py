"""A shell in the stack of an overlay or env without a kernel: "Open terminal" on a panel row.

The terminal must show what a notebook on that image sees (``which python``, the sidecar's
variables, the env's conda activation), so its container is the one a kernel on it would run:

- the stack of the kernelspec whose last overlay is the image (what "Open notebook" starts),
  else the stack "Make kernel…" would make (a python overlay first when the image has no Python:
  :func:`~kernel_provider.kernel.stackcheck.with_python`);
- planned by :func:`~kernel_provider.kernel.provisioner_base.kernel_request`, the kernels' own
  request, so its variables and binds are a kernel's;
- started by the kernel terminals' ``incontainer/shell.py``, which activates the envs as the
  kernel's launcher does.

It is a one-shot ``apptainer exec`` that lives as long as the shell. An env is mounted
**read-only**, never read-write: packages change through the panel, the magic or the env's own
kernel, which take the env's lock and record each revision; a shell writing to the env would
change it under its notebooks, unlocked and unrecorded. Even read-only, Apptainer lets no
container mount the env read-write while the terminal has it (measured: "can't open … for
writing, currently in use by another process"), and refuses the terminal while another container
writes to it. So the terminal's first line says what it holds, and a busy env is refused up front
with who holds it. Like a kernel's instance, the terminal holds CondaTainer's shared ``flock`` on
its images while it runs.

Its env file outlives the call that writes it (the terminal reads it as it starts, the server removes
it when the terminal has gone), so a server that crashes leaves it behind. The file's name says which
server opened it (:func:`env_file_name`), and the next server's sweep at start removes those whose
server is gone (:func:`sweep_env_files`).
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kernel_provider.envs.operations import EnvOperations, OneShot
from kernel_provider.host.locks import is_written
from kernel_provider.host.state import Owner
from kernel_provider.incontainer.constants import SHELL
from kernel_provider.incontainer.envlock import EnvBusyError
from kernel_provider.kernel.provisioner_base import kernel_request
from kernel_provider.kernel.stackcheck import with_python
from kernel_provider.model.overlays import Overlay, OverlayError
from kernel_provider.model.plan import StackRequest

CONTAINER_PYTHON = "python"  # what runs shell.py: the kernelspecs' argv[0], the stack's PATH python
ENV_FILE_NAME = re.compile(r"terminal-(\d+)-(\d+)-[0-9a-f]+-(.+)\.env")  # see env_file_name


@dataclass(frozen=True)
class StackShell:
    """A terminal's shell, ready for jupyter_server's terminal manager: its command, the env file
    the command reads (removed once the terminal is gone), and the line it prints first."""

    argv: list[str]
    env_file: Path
    banner: str


def banner(stack: Sequence[str], env: Overlay | None) -> str:
    """The terminal's first line: which stack, and for an env what its read-only mount means."""
    line = f"CondaTainer terminal on {' + '.join(stack)}, as a kernel on it runs (no kernel started)."
    if env is None:
        return line
    return (
        f"{line} {env.name} is mounted read-only: packages cannot change from here, and no kernel or "
        f"install can mount {env.name} read-write until this shell exits."
    )


def under_shared_locks(paths: Sequence[str], argv: Sequence[str]) -> list[str]:
    """``argv`` holding CondaTainer's shared ``flock`` on each image while it runs, as a kernel's
    instance does: ``condatainer rm``, our delete and a kernel that wants the env read-write then
    see the terminal's images in use. ``--nonblock``: an image being removed fails the start."""
    for path in reversed(paths):
        argv = ["flock", "--shared", "--nonblock", path, *argv]
    return list(argv)


def shell_argv(container: OneShot, cwd: str, first_line: str) -> list[str]:
    """The one-shot container that runs ``shell.py`` (banner, activation, then the shell) in ``cwd``,
    under the images' shared locks; quiet, or the runtime's INFO lines would come before the banner."""
    argv = container.argv([CONTAINER_PYTHON, SHELL, first_line], cwd, quiet=True)
    plan = container.plan
    return under_shared_locks([plan.base_image.path, *(o.path for o in plan.overlays)], argv)


def stack_request(operations: EnvOperations, overlay: Overlay, cwd: str) -> tuple[list[str], StackRequest]:
    """The stack (its overlay names) and container request of a kernel on ``overlay``, read-only,
    with ``cwd`` bound. Blocking (reads kernelspecs, may probe images): call it in a thread."""
    if overlay.kind == "sif":
        raise OverlayError(
            f"{overlay.name} is a base image, which every stack mounts; open a terminal on an overlay or env"
        )
    catalog = operations.catalog()
    kernel = operations.kernels_by_overlay(catalog).get(overlay.path)
    if kernel is not None:
        spec = kernel[1]
        stack, base_image, env = list(spec.overlays), spec.base_image, spec.extra_config.get("env", {})
    else:
        stack, base_image, env = with_python(operations.config, catalog, [overlay.name])[0], "", {}
    request = StackRequest(overlays=stack, base_image=base_image, writable=False, env=env, binds=[cwd])
    return stack, kernel_request(operations.config, request)


def refuse_if_written(operations: EnvOperations, overlay: Overlay) -> None:
    """:class:`EnvBusyError` when a container has the env open read-write (a kernel, an install):
    Apptainer would refuse the read-only mount with a less helpful message."""
    if overlay.kind == "img" and is_written(overlay.path):
        raise EnvBusyError(
            f"{overlay.name} is open read-write by {operations.holder(overlay.path)}; open the terminal from "
            "that kernel (Kernel starts → Terminal), or try again when it stops"
        )


def env_file_name(owner: Owner) -> str:
    """``terminal-PID-START-RANDOM-HOST.env``: the terminal's env file, signed by the server that
    opens it (its PID and start time, as instance state files are; the host, as the runtime
    directory can be in a home shared between hosts)."""
    return f"terminal-{owner.pid}-{owner.start_time}-{secrets.token_hex(6)}-{owner.host}.env"


def env_file_owner(filename: str) -> Owner | None:
    """The server that signed a terminal's env file (:func:`env_file_name`); None for any other name."""
    match = ENV_FILE_NAME.fullmatch(filename)
    return Owner(int(match.group(1)), int(match.group(2)), match.group(3)) if match else None


def sweep_env_files(directory: Path) -> list[Path]:
    """Remove the terminals' env files in ``directory`` whose server is gone (a crashed server's;
    a live server's, this host's or another's, stay); returns those removed."""
    removed = []
    for path in sorted(directory.glob("terminal-*.env")):
        owner = env_file_owner(path.name)
        if owner is not None and not owner.is_alive():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


async def open_stack_shell(operations: EnvOperations, name: str, cwd: str) -> StackShell:
    """The shell of a terminal on the overlay or env ``name`` (a catalog name), working in ``cwd``.

    :class:`~kernel_provider.model.overlays.OverlayNotFoundError` for an unknown name,
    :class:`OverlayError` for a base image or a stack that cannot be planned, :class:`EnvBusyError`
    while another container writes to the env. Nothing is written before those checks pass.
    """
    overlay = await asyncio.to_thread(operations.find, name)
    await asyncio.to_thread(refuse_if_written, operations, overlay)
    stack, request = await asyncio.to_thread(stack_request, operations, overlay, cwd)
    container = await operations.prepare_oneshot(request, env_file_name(Owner.current()))
    first_line = banner(stack, overlay if overlay.kind == "img" else None)
    return StackShell(shell_argv(container, cwd, first_line), container.env_file, first_line)
