"""Whether a kernel runs in SingularityCE's OCI mode, and what that mode refuses.

OCI mode (``singularity exec --oci``) is asked for by the provisioner's ``oci`` option,
``--oci`` among the stack's flags, or SingularityCE's ``oci mode = yes``; ``--no-oci`` turns
it off. Its container has its own network namespace, so a kernel on tcp ports of
127.0.0.1 is unreachable from the server: such a kernel is refused before anything starts,
with the reason, rather than left to time out.
"""

from __future__ import annotations

from collections.abc import Sequence

from kernel_provider.model.flavour import Runtime


class OciModeError(RuntimeError):
    """A kernel asked for OCI mode where it cannot work; the message says why and what to change."""


def check(runtime: Runtime, flags: Sequence[str], option: bool, transport: str) -> bool:
    """True when the kernel runs in OCI mode; raises :class:`OciModeError` when it cannot."""
    if not runtime.oci_mode(flags, option):
        return False
    if problem := runtime.oci_problem():
        raise OciModeError(problem)
    if transport != "ipc":
        raise OciModeError(
            f"the tcp transport cannot work in {runtime.flavour.name}'s OCI mode: the container has its "
            "own network namespace, so the server cannot reach the kernel's ports. Use the ipc transport "
            "(the default; remove transport=tcp from the kernel's options) or turn OCI mode off (--no-oci)."
        )
    return True
