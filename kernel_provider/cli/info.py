"""``jupyter condatainer info``: which container runtime the kernels use, and in which mode."""

from __future__ import annotations

import asyncio
import json

from traitlets import Bool

from kernel_provider.cli.base import Command
from kernel_provider.host.config import ApptainerNotFoundError
from kernel_provider.host.runtime_detect import detect


class InfoApp(Command):
    description = """Show the container runtime: Apptainer or SingularityCE, its version and binary,
and the mode kernels start in (native: in instances; oci: SingularityCE's OCI mode, each kernel
a container of its own, ipc transport only).

The runtime is found as CondaTainer finds it: $CNT_APPTAINER_BIN (or
c.CondaTainerConfig.apptainer_bin), else apptainer, else singularity on PATH."""
    examples = """
jupyter condatainer info
jupyter condatainer info --json
"""

    json_output = Bool(False, config=True, help="Print JSON.")
    flags = {"json": ({"InfoApp": {"json_output": True}}, "Print JSON.")}

    def main(self) -> None:
        config = self.cnt
        try:
            runtime = asyncio.run(detect(config.require_apptainer()))
        except ApptainerNotFoundError as err:
            self.fail(str(err))
            return
        info = runtime.as_dict(oci=runtime.oci_mode(option=config.oci))
        if self.json_output:
            print(json.dumps(info, indent=1))
            return
        print(f"runtime:   {runtime.label} ({runtime.binary})")
        print(f"mode:      {info['mode']}" + ("" if info["instances"] else " (no instances; ipc transport only)"))
