"""Getting a notebook's recorded stack back: the remedies the server offers for a record
(``POST /condatainer/api/stack/remedies``, :mod:`kernel_provider.envs.remedies`), decided by pure
functions and then applied for real as the JupyterLab plugin applies them: a freeze of the
recorded env revision and a switch to its kernel, a rollback, a switch to another kernelspec whose
stack has the recorded images."""

from __future__ import annotations

import os
import shutil

import pytest
from conftest import env_kernel, reply_to, run_cell, run_job, server_kernel

from kernel_provider.envs.remedies import env_remedies, frozen_overlay, same_stack
from kernel_provider.kernel.kernelspecs import KernelspecStore, custom_spec

SQF = {"size": 4096, "mtime": 1, "head": "ab"}
BASE = {"name": "ubuntu24/base_image", "kind": "sif", "identity": {"size": 9, "mtime": 1, "head": "cd"}}


def record(*overlays, env=None) -> dict:
    data = {"version": 1, "base_image": BASE, "overlays": list(overlays), "writable": False}
    if env:
        data["env"] = env
    return data


def test_the_same_stack_is_the_same_images_by_identity_and_the_env_revision():
    python = {"name": "python/3.11", "kind": "sqf", "identity": SQF}
    env = {"name": "bio", "kind": "img"}
    recorded = record(python, env, env={"name": "bio", "revision": 2})
    assert same_stack(recorded, recorded)
    renamed = {**python, "name": "python-old/3.11"}
    assert same_stack(recorded, record(renamed, env, env={"name": "bio", "revision": 2})), "names may differ"
    rebuilt = {**python, "identity": {**SQF, "head": "ff"}}
    assert not same_stack(recorded, record(rebuilt, env, env={"name": "bio", "revision": 2}))
    assert not same_stack(recorded, record(python, env, env={"name": "bio", "revision": 3}))
    assert not same_stack(
        recorded, record(python, {"name": "other", "kind": "img"}, env={"name": "other", "revision": 2})
    )
    assert not same_stack(recorded, record(env, python, env={"name": "bio", "revision": 2})), "mount order counts"


def test_env_remedies_freeze_or_reuse_a_freeze_and_roll_back():
    assert frozen_overlay("bio", 2) == ("bio-rev2", "1.0")
    freeze, rollback = env_remedies("bio", 2, 5, freezable=True, frozen_kernel="")
    assert (freeze.action, freeze.env, freeze.revision, freeze.name, freeze.version) == (
        "freeze",
        "bio",
        2,
        "bio-rev2",
        "1.0",
    )
    assert freeze.kernel == "condatainer-bio-rev2-1.0-frozen" and not freeze.shared
    assert (rollback.action, rollback.env, rollback.revision, rollback.shared) == ("rollback", "bio", 2, True)
    assert "everyone" in rollback.description and "revision 6" in rollback.description
    switch, rollback = env_remedies("bio", 2, 5, freezable=True, frozen_kernel="condatainer-bio-rev2-1.0-frozen")
    assert (switch.action, switch.kernel) == ("switch_kernel", "condatainer-bio-rev2-1.0-frozen")
    assert [r.action for r in env_remedies("bio", 2, 5, freezable=False, frozen_kernel="")] == ["rollback"]


@pytest.fixture
def jp_server_config(kernel_env):
    return {"ServerApp": {"jpserver_extensions": {"kernel_provider": True}}}


async def remedies_for(api, recorded: dict, kernel: str = "") -> list[dict]:
    status, data = await api(
        "POST", "stack", "remedies", body={"metadata": {"condatainer": recorded}, "kernel": kernel}
    )
    assert status == 200, data
    return data["remedies"]


@pytest.mark.integration
async def test_env_moved_on_freeze_then_switch_or_roll_back(channel_env, api, kernel_env, jp_serverapp):
    notebook_kernel = custom_spec(["python/3.11", "rm"], label="rm", writable=True).name  # env_kernel's
    async with env_kernel(api, jp_serverapp, "rm", ["zlib"]) as (kernel_id, client):
        _, recorded = await api("GET", "kernels", kernel_id, "stack")
        info = await reply_to(client, client.kernel_info())
    assert recorded["env"] == {"name": "rm", "revision": 0}
    assert info["content"]["language_info"]["condatainer"] == recorded, "the kernel reads its env's revision too"
    assert await remedies_for(api, recorded, notebook_kernel) == [], "nothing differs: nothing to do"
    await run_job(api, "overlays", "rm", "packages", body={"specs": ["demo-tool"]})

    offered = await remedies_for(api, recorded, notebook_kernel)
    print("remedies:", offered)
    assert [r["action"] for r in offered] == ["freeze", "rollback"]
    freeze, rollback = offered
    assert (freeze["name"], freeze["version"], freeze["revision"]) == ("rm-rev0", "1.0", 0)
    assert rollback["shared"] and "everyone" in rollback["description"]

    body = {"name": freeze["name"], "version": freeze["version"], "revision": freeze["revision"]}
    await run_job(api, "overlays", freeze["env"], "freeze", body={**body, "register_kernel": True})
    assert freeze["kernel"] in KernelspecStore().read_all(), "the freeze registered the kernel it named"
    async with server_kernel(jp_serverapp, freeze["kernel"]) as (_, client):
        meta = "import glob, os; print([bool(glob.glob(f'{os.environ[\"CONDA_PREFIX\"]}/conda-meta/{p}-*.json'))"
        found, error = await run_cell(client, meta + " for p in ('zlib', 'demo-tool')])")
    assert error is None and found == "[True, False]\n", "the frozen kernel has revision 0's packages"
    assert [(r["action"], r["kernel"]) for r in await remedies_for(api, recorded, notebook_kernel)] == [
        ("switch_kernel", freeze["kernel"]),
        ("rollback", ""),
    ], "frozen earlier: its kernel is offered, not a second freeze"

    await run_job(api, "overlays", rollback["env"], "rollback", body={"revision": rollback["revision"]})
    _, compared = await api("POST", "stack", "compare", body={"stack": recorded})
    assert compared == {"differences": []}, "the env holds revision 0's packages again (as revision 2)"
    assert await remedies_for(api, recorded, notebook_kernel) == []


@pytest.mark.integration
async def test_a_changed_overlay_offers_the_kernel_with_the_recorded_images(api, kernel_env, jp_serverapp):
    images = kernel_env / "images"
    used = custom_spec(["python/3.11", "hello/1.0"], label="used")
    KernelspecStore().write(used)
    async with server_kernel(jp_serverapp, used.name) as (kernel_id, _):
        _, recorded = await api("GET", "kernels", kernel_id, "stack")
    assert await remedies_for(api, recorded, used.name) == [], "no other kernel has this stack"
    shutil.copy2(images / "hello--1.0.sqf", images / "hellokept--1.0.sqf")  # the old build, kept under another name
    kept = custom_spec(["python/3.11", "hellokept/1.0"], label="kept")
    KernelspecStore().write(kept)

    hello = images / "hello--1.0.sqf"  # a link to the cache's image: replaced, never written
    content = hello.read_bytes()
    hello.unlink()
    hello.write_bytes(content[:-1] + b"\1")
    os.utime(hello, (1, 1))
    offered = await remedies_for(api, recorded, used.name)
    assert [(r["action"], r["kernel"]) for r in offered] == [("switch_kernel", kept.name)], offered
    assert offered[0]["label"] == "Switch to kernel CondaTainer: kept"
    status, data = await api("POST", "stack", "remedies", body={"metadata": {}})
    assert status == 400 and "no stack record" in data["message"], data
