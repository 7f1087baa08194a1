"""Apptainer argument lists, built from a :class:`~kernel_provider.model.plan.ContainerPlan`.

Pure functions: each returns an argv list for ``asyncio.create_subprocess_exec`` (never
a shell string) or the text of an ``--env-file``. An instance's start environment is
not visible to ``exec instance://``, so every exec re-passes the whole environment
with ``--cleanenv --env-file`` — which also keeps the host's ``PYTHONPATH``, ``JPY_*``
and friends out of the container.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from kernel_provider.model.envfile import REFERENCE
from kernel_provider.model.flavour import APPTAINER, OCI_FLAG, Flavour
from kernel_provider.model.plan import ContainerPlan
from kernel_provider.model.validation import env_key_problem

CAP_SYS_RESOURCE_BIT = 24
# What an OCI-mode container of a (non-OCI) SIF starts with, which $PATH in our values extends.
OCI_BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LD_LIBRARY_PATH": "/.singularity.d/libs",
}


def _mount_args(plan: ContainerPlan, oci: bool = False) -> list[str]:
    # --oci goes first, once, whether the stack's flags had it or the mode was asked otherwise.
    args = [OCI_FLAG] if oci else []
    args += [flag for flag in plan.flags if flag != OCI_FLAG]
    if plan.fakeroot:
        args.append("--fakeroot")
    for bind in plan.binds:
        args += ["--bind", bind]
    for overlay in plan.overlay_args:
        args += ["--overlay", overlay]
    return args


START_SCRIPT = "/.singularity.d/startscript"  # what an instance runs as it starts (the image's %startscript)


def instance_start_argv(
    apptainer: str, plan: ContainerPlan, name: str, env_file: str, start_script: str = ""
) -> list[str]:
    """``apptainer instance start`` with the plan's binds, overlays and flags; ``start_script``: a
    host file the instance runs in place of the image's own start script."""
    replaced = ["--bind", f"{start_script}:{START_SCRIPT}:ro"] if start_script else []
    return [
        apptainer,
        "instance",
        "start",
        *_mount_args(plan),
        *replaced,
        "--cleanenv",
        "--env-file",
        env_file,
        plan.base_image.path,
        name,
    ]


def instance_exec_argv(apptainer: str, name: str, env_file: str, command: Sequence[str], pwd: str = "") -> list[str]:
    """Run ``command`` in a running instance with exactly the given environment."""
    argv = [apptainer, "exec", "--cleanenv", "--env-file", env_file]
    if pwd:
        argv += ["--pwd", pwd]
    return [*argv, f"instance://{name}", *command]


def oneshot_exec_argv(
    apptainer: str,
    plan: ContainerPlan,
    env_file: str,
    command: Sequence[str],
    pwd: str = "",
    oci: bool = False,
    quiet: bool = False,
) -> list[str]:
    """Run ``command`` in a fresh container that lives only as long as it does.

    ``oci``: SingularityCE's OCI mode (``exec --oci``), which has no instances: a kernel in
    that mode is such a container of its own, and so is every env change. ``quiet``: without
    the runtime's INFO lines (an ordinary user's mount notes), for output a person reads first
    (a terminal); warnings and errors still show.
    """
    argv = [apptainer, *(["--quiet"] if quiet else []), "exec", *_mount_args(plan, oci), "--cleanenv"]
    argv += ["--env-file", env_file]
    if pwd:
        argv += ["--pwd", pwd]
    return [*argv, plan.base_image.path, *command]


def instance_stop_argv(apptainer: str, name: str, force: bool = False) -> list[str]:
    """``apptainer instance stop``; ``force`` kills it (SIGKILL) instead of asking it to stop."""
    return [apptainer, "instance", "stop", *(["--force"] if force else []), name]


def instance_list_argv(apptainer: str) -> list[str]:
    """This user's running instances as JSON: how a sweep tells which of ours are still up."""
    return [apptainer, "instance", "list", "--json"]


def _single_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def _expanded_as_oci(env: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The values with ``$NAME`` resolved as a shell would, line by line, against the OCI
    container's own environment: SingularityCE's OCI mode does not expand env-file values."""
    known = dict(OCI_BASE_ENV)
    expanded = []
    for key, value in env:
        value = REFERENCE.sub(lambda match: known.get(match.group(1) or match.group(2), ""), value)
        known[key] = value
        expanded.append((key, value))
    return expanded


def render_env_file(env: Iterable[tuple[str, str]], oci: bool = False) -> str:
    """An ``--env-file`` equivalent to CondaTainer's ``--env KEY=VALUE`` flags.

    Apptainer evaluates an env-file on the *host* (``$PATH`` would become the host's
    PATH) and then, like every ``--env`` value, once more inside the container. Single
    quotes make the host pass a no-op, so ``$PATH`` and ``$OTHER`` expand inside the
    container, after all variables are set — exactly as with CondaTainer's flags.
    ``oci``: SingularityCE's OCI mode sets the values literally, so we expand them here.
    Keys go in unquoted, so one that is not a plain variable name is refused, never written.
    """
    lines = []
    for key, value in _expanded_as_oci(env) if oci else env:
        if problem := env_key_problem(key):
            raise ValueError(
                f"cannot pass the variable {key!r} into the container: {problem}; "
                "rename it in the kernelspec's env or the configuration that sets it"
            )
        lines.append(f"{key}={_single_quote(value)}\n")
    return "".join(lines)


def needs_drop_caps(uid: int, cap_bounding_set: int) -> bool:
    """Root without CAP_SYS_RESOURCE (some VMs, containers) must tell Apptainer to drop it."""
    return uid == 0 and not cap_bounding_set & (1 << CAP_SYS_RESOURCE_BIT)


def apptainer_process_env(
    host_env: Mapping[str, str], uid: int, cap_bounding_set: int, flavour: Flavour = APPTAINER
) -> dict[str, str]:
    """Environment for the runtime's process itself (not the container's).

    The variable is the flavour's own (``APPTAINER_DROP_CAPS``, ``SINGULARITY_DROP_CAPS``):
    SingularityCE does not read Apptainer's, and Apptainer warns about the other.
    """
    env = dict(host_env)
    variable = flavour.drop_caps_variable
    if needs_drop_caps(uid, cap_bounding_set) and variable not in env:
        env[variable] = "CAP_SYS_RESOURCE"
    return env
