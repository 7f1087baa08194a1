"""A shell in a kernel's container with the kernel's environment: what "Open terminal" runs.

Started by the server in the kernel's own instance, with the kernel's env file (the stack's
variables, the kernelspec's), as ``python shell.py`` with the kernel's Python; or, for a
terminal on an overlay or env without a kernel, in a container of the stack a kernel on it
would run (:mod:`kernel_provider.kernel.stackshell`). The stack's conda
envs are activated exactly as the kernel's launcher does it (:mod:`.activation`), then this
process becomes the shell. The shell reads no start-up files (``--norc``/``--noprofile``): a
``~/.bashrc`` that sets ``PATH`` or runs ``conda activate`` would give the terminal another
``python`` than the notebook's. An argument, if any, is printed first: what the terminal is
(a terminal on an overlay without a kernel says which stack, and that its env is read-only).
Standard library only.
"""

import os
import sys

# Run as a script from LIB_DIR/kernel_provider/incontainer/, as launch.py is.
LIB_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHELLS = ("/bin/bash", "/bin/sh")


def main() -> None:
    """Print the banner (the first argument, if any), activate the stack's envs, then become an interactive shell."""
    if len(sys.argv) > 1:
        print(sys.argv[1], flush=True)
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)
    sys.path.append(LIB_DIR)
    from kernel_provider.incontainer.activation import activate_in_process

    activate_in_process()
    os.environ["PYTHONNOUSERSITE"] = "1"  # as in the kernel
    os.environ.setdefault("TERM", "xterm-256color")
    shell = next((s for s in SHELLS if os.access(s, os.X_OK)), SHELLS[-1])
    argv = [shell, "--norc", "--noprofile", "-i"] if shell.endswith("bash") else [shell, "-i"]
    os.execv(shell, argv)


if __name__ == "__main__":
    main()
