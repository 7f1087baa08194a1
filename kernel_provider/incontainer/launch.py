"""Start ipykernel inside a CondaTainer container, with that container's Python.

Runs with nothing but the standard library. The host bind-mounts this package at
``/opt/jupyter-condatainer/lib`` and cached ipykernel builds at
``/opt/jupyter-condatainer/ipykernel/cp3XY``; both go at the *end* of ``sys.path``,
so packages of the environment itself always win and a supplied ipykernel is used
only when the environment has none. The ``%condatainer`` magic is loaded on start.
Before ipykernel starts, the stack's conda envs are activated as ``conda activate`` would
(``kernel_provider.incontainer.activation``: ``etc/conda/activate.d/*.sh``, ``conda-meta/state`` variables).
"""

import importlib.util
import os
import runpy
import sys

# Run as a script from LIB_DIR/kernel_provider/incontainer/, before the package is importable:
# its own imports of the package are absolute and come after LIB_DIR is on sys.path.
LIB_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NO_IPYKERNEL_EXIT = 3
MAGIC_EXTENSION = "--ext=kernel_provider.incontainer.magic"
STACK_EXTENSION = "--ext=kernel_provider.incontainer.stackinfo"  # the stack record in kernel_info


def activate_conda_envs() -> None:
    """``conda activate`` the stack's envs (activation scripts, env vars); nothing of the host's
    ``~/.local`` (user site-packages) in this kernel or its child processes."""
    try:
        from kernel_provider.incontainer.activation import activate_in_process
    except ImportError:  # an older package bound in: no activation
        pass
    else:
        activate_in_process()
    os.environ["PYTHONNOUSERSITE"] = "1"
    import site

    user_site = site.getusersitepackages() if hasattr(site, "getusersitepackages") else ""
    if user_site:
        sys.path[:] = [p for p in sys.path if not p.startswith(user_site)]


def prepare() -> None:
    """The env's own packages first, then this package and a supplied ipykernel; the conda envs
    activated. Shared by a kernel started by exec and the fork server (``zygote``)."""
    # Python put this script's directory first on sys.path; it must not shadow anything.
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)
    if LIB_DIR not in sys.path:
        sys.path.append(LIB_DIR)
    activate_conda_envs()
    from kernel_provider.incontainer.constants import SUPPLY_DIR

    if importlib.util.find_spec("ipykernel") is None:
        tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
        supplied = os.path.join(SUPPLY_DIR, tag)
        if not os.path.isdir(supplied):
            sys.stderr.write(
                f"jupyter-condatainer: {sys.executable} has no ipykernel and none was supplied for {tag}\n"
            )
            sys.exit(NO_IPYKERNEL_EXIT)
        sys.path.append(supplied)


def run_kernel(args: list[str]) -> None:
    """Become ipykernel with the kernel's arguments (``-f CONNECTION_FILE`` …), the magic and the
    stack record loaded. The one way into ipykernel of an exec'd kernel and a forked one alike."""
    sys.argv = ["ipykernel_launcher", *args, MAGIC_EXTENSION, STACK_EXTENSION]
    runpy.run_module("ipykernel_launcher", run_name="__main__", alter_sys=True)


def main() -> None:
    """Become ipykernel: the env's own packages first, then this package and a supplied ipykernel, the magic loaded."""
    prepare()
    run_kernel(sys.argv[1:])


if __name__ == "__main__":
    main()
