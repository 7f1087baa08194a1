"""Paths inside the container, defined once for the host (which binds them) and the container side."""

ENV_PREFIX = "/ext3/env"  # CondaTainer's conda env in a writable .img overlay
LIB_DIR = "/opt/jupyter-condatainer/lib"  # this package is bound read-only at LIB_DIR/kernel_provider
SUPPLY_DIR = "/opt/jupyter-condatainer/ipykernel"  # host-built ipykernel, one cp3XY directory per Python
LAUNCHER = f"{LIB_DIR}/kernel_provider/incontainer/launch.py"
SHELL = f"{LIB_DIR}/kernel_provider/incontainer/shell.py"  # "Open terminal": the stack's envs activated, then a shell
# The kernel's stack record: a JSON file in the runtime directory, named in this variable, that the
# kernel puts into its kernel_info_reply as language_info[STACK_RECORD_KEY] (a notebook's metadata
# has it under the same key too)
STACK_RECORD_VAR = "CONDATAINER_STACK_RECORD"
STACK_RECORD_KEY = "condatainer"
