"""A container plan for this host: the pure planner fed with this host's probes, environment and user.

Every container we start (a kernel's instance, a one-shot env change, a freeze) is planned here,
so all of them see the same binds, variables and ``--fakeroot`` rules.
"""

from __future__ import annotations

import os

from kernel_provider.host import probes
from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.host.probes import ImageProbe
from kernel_provider.model.overlays import Catalog, scan
from kernel_provider.model.plan import ContainerPlan, StackRequest, plan_container


def plan_for_host(request: StackRequest, config: CondaTainerConfig, catalog: Catalog | None = None) -> ContainerPlan:
    """Plan ``request`` with this host's image probe, environment, working directory and user.

    Blocking (image probes run ``unsquashfs``/``debugfs``): call it in a thread from the event loop.
    """
    return plan_container(
        request,
        catalog if catalog is not None else scan(config.image_dirs, config.distro),
        ImageProbe(),
        environ=os.environ,
        cwd=os.getcwd(),
        uid=os.getuid(),
        extra_binds=config.container_binds(),
    )


class FakerootUnavailableError(RuntimeError):
    """The stack needs ``--fakeroot`` and this user cannot have it; the message says what the admin must add."""


def _needs_fakeroot_because(plan: ContainerPlan) -> str:
    env_image = plan.env_image
    if env_image is not None and plan.writable:
        image = os.path.basename(env_image.path)
        return f"{image} belongs to another user (or root) and is mounted writable, so it needs --fakeroot"
    return "this stack asks for --fakeroot"


def check_fakeroot(plan: ContainerPlan) -> None:
    """Refuse a ``--fakeroot`` plan this user cannot run (before Apptainer fails obscurely)."""
    if plan.fakeroot and (problem := probes.fakeroot_problem(os.getuid())):
        raise FakerootUnavailableError(f"{_needs_fakeroot_because(plan)}, which is not available: {problem}")


def fakeroot_hint(plan: ContainerPlan) -> str:
    """Advice for a failed ``--fakeroot`` start by a user without subuid/subgid ranges."""
    advice = probes.missing_subids(os.getuid()) if plan.fakeroot else None
    return f"\n{_needs_fakeroot_because(plan)}: {advice}" if advice else ""
