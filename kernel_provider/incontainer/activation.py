"""``conda activate`` for a kernel, inside the container, before ipykernel starts.

Standard library only (it runs in the container's Python). The conda envs of the stack are the
entries of ``PATH`` whose parent has a ``conda-meta`` directory: the writable env
(``/ext3/env/bin``) and frozen envs (``/cnt/<name>/<version>/bin``). Each is activated the way
``conda activate`` does it, lowest ``PATH`` priority first: ``CONDA_PREFIX``,
``CONDA_DEFAULT_ENV`` and ``CONDA_SHLVL`` are exported, then the variables of
``conda-meta/state`` (``{"env_vars": {...}}``, what ``conda env config vars set`` writes), then
every ``etc/conda/activate.d/*.sh`` is sourced, in name order, by ``sh``; the resulting
environment is what the kernel gets. Scripts print to stderr (never into the kernel's
protocol); a failing script is reported and the variables are still set.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

SHELL_ONLY = {"_", "SHLVL", "PWD", "OLDPWD"}  # set by sh itself, not by the activation
DONE_MARKER = "_JCT_CONDA_ACTIVATED"
TIMEOUT = 120.0
_RESTART_PREFIXES = ("PYTHON", "LD_")  # read at interpreter start: a change needs a fresh process


def conda_prefixes(path: str) -> list[str]:
    """The conda envs on PATH, lowest priority first."""
    found: list[str] = []
    for entry in reversed([p for p in path.split(":") if p]):
        entry = entry.rstrip("/")
        if not entry.endswith("/bin"):
            continue
        prefix = entry[: -len("/bin")]
        if prefix and prefix not in found and os.path.isdir(os.path.join(prefix, "conda-meta")):
            found.append(prefix)
    return found


def env_vars(prefix: str) -> dict[str, str]:
    """``conda env config vars`` of an env (``conda-meta/state``)."""
    try:
        with open(os.path.join(prefix, "conda-meta", "state"), encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    values = data.get("env_vars") if isinstance(data, dict) else None
    if not isinstance(values, dict):
        return {}
    return {str(k): str(v) for k, v in values.items() if str(k).isidentifier()}


def _activate_scripts(prefix: str) -> list[str]:
    return sorted(glob.glob(os.path.join(prefix, "etc", "conda", "activate.d", "*.sh")))


def _quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def _activation_script(prefixes: list[str], python: str) -> str:
    lines = []
    for level, prefix in enumerate(prefixes, start=1):
        exports = {"CONDA_PREFIX": prefix, "CONDA_DEFAULT_ENV": prefix, "CONDA_SHLVL": str(level), **env_vars(prefix)}
        lines += [f"export {key}={_quote(value)}" for key, value in exports.items()]
        for script in _activate_scripts(prefix):
            lines.append(
                f"if [ -r {_quote(script)} ]; then . {_quote(script)} >&2 </dev/null || "
                f"echo {_quote('jupyter-condatainer: activation script ' + script + ' failed')} >&2; fi"
            )
    dump = "import json, os, sys; sys.stdout.write(json.dumps(dict(os.environ)))"
    lines.append(f"exec {_quote(python)} -I -c {_quote(dump)}")
    return "\n".join(lines) + "\n"


def activated_environment(environ: dict[str, str], python: str = sys.executable) -> dict[str, str] | None:
    """The environment after activating the stack's conda envs; None when there are none."""
    prefixes = conda_prefixes(environ.get("PATH", ""))
    if not prefixes:
        return None
    fallback = dict(environ)
    for level, prefix in enumerate(prefixes, start=1):
        fallback.update(
            {"CONDA_PREFIX": prefix, "CONDA_DEFAULT_ENV": prefix, "CONDA_SHLVL": str(level), **env_vars(prefix)}
        )
    try:
        result = subprocess.run(
            ["/bin/sh", "-c", _activation_script(prefixes, python)],
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=None,
            timeout=TIMEOUT,
            check=False,
        )
        dumped = json.loads(result.stdout.decode(errors="replace")) if result.returncode == 0 else None
    except (OSError, ValueError, subprocess.TimeoutExpired) as err:
        sys.stderr.write(f"jupyter-condatainer: conda activation failed ({err}); only the env's variables are set\n")
        return fallback
    if not isinstance(dumped, dict):
        sys.stderr.write(
            "jupyter-condatainer: an activation script stopped the shell; only the env's variables are set\n"
        )
        return fallback
    new = {k: v for k, v in dumped.items() if not (k in SHELL_ONLY and k not in environ)}
    for key in SHELL_ONLY & set(environ):
        new[key] = environ[key]
    return new


def activate_in_process() -> None:
    """Activate into ``os.environ``; re-exec the interpreter when a startup variable changed."""
    if os.environ.pop(DONE_MARKER, None):
        return
    new = activated_environment(dict(os.environ))
    if new is None:
        return
    changed = {k for k in set(new) | set(os.environ) if new.get(k) != os.environ.get(k)}
    if any(k.startswith(_RESTART_PREFIXES) for k in changed):
        new[DONE_MARKER] = "1"
        sys.stdout.flush()
        sys.stderr.flush()
        argv = list(getattr(sys, "orig_argv", [])) or [sys.executable, *sys.argv]
        os.execve(sys.executable, argv, new)
    os.environ.clear()
    os.environ.update(new)
