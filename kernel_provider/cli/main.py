"""``jupyter condatainer``: kernelspecs and instances from the command line.

jupyter condatainer kernelspecs sync
jupyter condatainer kernelspecs list
jupyter condatainer kernelspecs add NAME --overlay python/3.11 [--overlay X] [--env my.img]
jupyter condatainer kernelspecs add NAME --overlay python/3.11 --slurm [--slurm-arg=--partition=debug …]
jupyter condatainer kernelspecs remove NAME
jupyter condatainer instances list
jupyter condatainer instances stop NAME | --orphans
jupyter condatainer env history|export|rollback|freeze NAME …   (kernel_provider/cli/env.py)
jupyter condatainer info [--json]     which runtime (Apptainer/SingularityCE) and mode
"""

from __future__ import annotations

import sys

from kernel_provider.cli.base import CONFIG_FILE_NAME, CommandGroup, subcommand_table
from kernel_provider.cli.env import EnvApp
from kernel_provider.cli.info import InfoApp
from kernel_provider.cli.instances import InstancesApp
from kernel_provider.cli.kernelspecs import KernelspecsApp


class CondaTainerApp(CommandGroup):
    name = "jupyter-condatainer"
    description = f"""Jupyter kernels in CondaTainer environments on Apptainer.

A kernel runs in an Apptainer instance of a CondaTainer stack: a base image, read-only .sqf
overlays (python/3.11, samtools, ...) and at most one writable .img env. These commands
manage the kernelspecs, the instances and the envs' history; the JupyterLab panel and the
%condatainer magic in a kernel do the same from a notebook.

Settings (image directories, Apptainer, binds: CondaTainerConfig in --help-all)
are read from these files in the Jupyter config path (jupyter --paths):
    jupyter_config.py              read by jupyter server too
    {CONFIG_FILE_NAME}.py  read by these commands only; --generate-config writes it"""
    examples = """
jupyter condatainer kernelspecs sync        # a kernel for every python/<version> overlay
jupyter condatainer kernelspecs add bio --overlay python/3.11 --overlay samtools --env ~/envs/bio.img
jupyter condatainer instances stop --orphans
jupyter condatainer env history bio
jupyter condatainer --generate-config       # every option, commented, in the config file
jupyter condatainer kernelspecs --help
"""
    subcommands = subcommand_table(kernelspecs=KernelspecsApp, instances=InstancesApp, env=EnvApp, info=InfoApp)


def main() -> None:
    """The ``jupyter-condatainer`` console script (``jupyter condatainer``)."""
    CondaTainerApp.launch_instance()


if __name__ == "__main__":
    sys.exit(main())
