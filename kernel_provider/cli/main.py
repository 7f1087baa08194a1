"""``jupyter condatainer``: kernelspecs and instances from the command line.

    jupyter condatainer kernelspecs sync
    jupyter condatainer kernelspecs list
    jupyter condatainer kernelspecs add NAME --overlay python/3.11 [--overlay X] [--env my.img]
    jupyter condatainer kernelspecs add NAME --overlay python/3.11 --slurm [--slurm-arg=--partition=debug …]
    jupyter condatainer kernelspecs remove NAME
    jupyter condatainer instances list
    jupyter condatainer instances stop NAME | --orphans
    jupyter condatainer env history|export|rollback|freeze NAME …   (kernel_provider/cli/env.py)
"""

from __future__ import annotations

import sys

from kernel_provider.cli.base import CommandGroup
from kernel_provider.cli.env import EnvApp
from kernel_provider.cli.instances import InstancesApp
from kernel_provider.cli.kernelspecs import KernelspecsApp


class CondaTainerApp(CommandGroup):
    name = "jupyter-condatainer"
    description = "Jupyter kernels in CondaTainer environments on Apptainer."
    subcommands = {
        "kernelspecs": (KernelspecsApp, KernelspecsApp.description),
        "instances": (InstancesApp, InstancesApp.description),
        "env": (EnvApp, EnvApp.description),
    }


def main() -> None:
    CondaTainerApp.launch_instance()


if __name__ == "__main__":
    sys.exit(main())
