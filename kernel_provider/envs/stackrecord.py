"""The stack a notebook ran on: its record with the env's revision, and what differs from it now.

The record (:mod:`kernel_provider.host.stackimages`) names the base image and every overlay in
mount order, each with a cheap content identity; the writable env by its history revision
(its bytes change on every mount). :func:`compare` says what differs now, an env that moved on
included, and how to get back.

Every CondaTainer kernel carries the record of its stack in its ``kernel_info_reply``
(``language_info.condatainer``): the provisioner makes it as the kernel starts, the kernel adds
its env's revision and puts it there (:mod:`kernel_provider.incontainer.stackinfo`), so whatever
client runs the notebook (JupyterLab, nbclient, nbconvert, papermill) saves it with the
notebook's ``language_info``.
"""

from __future__ import annotations

from kernel_provider.envs.envmeta import EnvUnreadableError
from kernel_provider.envs.operations import EnvOperations
from kernel_provider.host.stackimages import RECORD_VERSION, identity, plan_record
from kernel_provider.incontainer.constants import STACK_RECORD_KEY
from kernel_provider.incontainer.history import Revision
from kernel_provider.model.overlays import Overlay
from kernel_provider.model.plan import ContainerPlan


def env_revisions(operations: EnvOperations, env: Overlay) -> list[Revision]:
    """The env's revisions now, oldest first; none when it cannot be read now (another container
    writes it): a record or a comparison then says nothing about the env rather than fail."""
    try:
        return operations.env_meta(env).revisions()
    except EnvUnreadableError:
        return []


def record(operations: EnvOperations, plan: ContainerPlan) -> dict:
    """The record of a kernel's stack (its instance's plan) with its env's revision, read as the
    server reads envs. Blocking: call it in a thread."""
    data = plan_record(plan)
    if plan.env_image is not None:
        revisions = env_revisions(operations, plan.env_image)
        data["env"]["revision"] = revisions[-1].number if revisions else None
    return data


def from_metadata(metadata: dict) -> dict | None:
    """The record a notebook's metadata holds, or None. The kernel's own first
    (``language_info.condatainer``, from its ``kernel_info_reply``, which every client that runs a
    notebook saves: JupyterLab, nbclient, nbconvert, papermill), else the one the JupyterLab plugin
    wrote (``condatainer``), in notebooks saved before kernels carried it."""
    if not isinstance(metadata, dict):
        return None
    language_info = metadata.get("language_info")
    if isinstance(language_info, dict) and isinstance(language_info.get(STACK_RECORD_KEY), dict):
        return language_info[STACK_RECORD_KEY]
    found = metadata.get(STACK_RECORD_KEY)
    return found if isinstance(found, dict) else None


def check(recorded: object) -> dict:
    """The record itself; :class:`ValueError` when it is none of ours."""
    if not isinstance(recorded, dict) or recorded.get("version") != RECORD_VERSION:
        raise ValueError(
            "not a CondaTainer stack record (metadata 'condatainer' of version 1); run the notebook on a "
            "CondaTainer kernel to record its stack"
        )
    return recorded


def moved_on(recorded_revision: int, revisions: list[Revision]) -> bool:
    """Whether the env now holds other packages than at the recorded revision. A rollback to it makes
    a new revision with the same packages: that is no change."""
    if not revisions or revisions[-1].number == recorded_revision:
        return False
    if 0 <= recorded_revision < len(revisions):
        return revisions[recorded_revision].package_set() != revisions[-1].package_set()
    return True


def compare(operations: EnvOperations, recorded: dict) -> list[str]:
    """What differs between a recorded stack and the images now, one sentence each (empty: the
    same). Blocking: call it in a thread."""
    recorded = check(recorded)
    catalog = operations.catalog().by_name
    differences = []
    for entry in [recorded.get("base_image") or {}, *(recorded.get("overlays") or [])]:
        name = entry.get("name", "?")
        overlay = catalog.get(name)
        if overlay is None:
            differences.append(f"{name} is missing from the image directories")
            continue
        wanted = entry.get("identity")
        if wanted is None:
            continue  # the writable env: compared by revision below
        now = identity(overlay.path)
        if now != wanted:
            what = "rebuilt (other content)" if now["head"] != wanted["head"] else "changed (size or time)"
            differences.append(f"{name} was {what} since this notebook ran")
    env = recorded.get("env")
    if env and env.get("name") in catalog and isinstance(env.get("revision"), int):
        revisions = env_revisions(operations, catalog[env["name"]])
        if moved_on(env["revision"], revisions):
            differences.append(
                f"the env {env['name']} moved on from revision {env['revision']} to {revisions[-1].number}; to get "
                f"the recorded one back, roll back to revision {env['revision']} or freeze it as an overlay "
                "(the panel's History section)"
            )
    return differences
