"""Disk space through a real jupyter_server: env use and image directories' free space, and growing
an env (refused while mounted; on a copy, then renamed) until ``df`` inside the container shows it."""

from __future__ import annotations

import os

import pytest
from conftest import exec_on_env, held_writable, wait_job

pytestmark = pytest.mark.integration
MiB = 1024 * 1024


@pytest.fixture
def jp_server_config(image_layout):
    return {"ServerApp": {"jpserver_extensions": {"kernel_provider": True}}}


def container_df_kib(layout, image) -> int:
    """Size of the env's filesystem as ``df`` in a container that mounts it sees it (KiB)."""
    out = exec_on_env(image, layout / "images" / "ubuntu24--base_image.sif", ["df", "-k", "/"])
    return int(out.splitlines()[-1].split()[1])


async def test_disk_use_and_growing_an_env(api, image_layout):
    image = image_layout / "images" / "env.img"
    status, data = await api("GET", "disk")
    assert status == 200
    env = {row["name"]: row for row in data["envs"]}["env"]
    assert env["size"] == env["fs_total"] == 256 * MiB and 0 < env["fs_used"] < env["fs_total"]
    assert env["allocated"] < env["size"] and not env["in_use"] and not env["nearly_full"]
    assert [d for d in data["image_dirs"] if d["path"] == str(image_layout / "images") and d["free"] > 0]

    status, refused = await api("POST", "overlays", "env", "resize", body={"size_mb": 128})
    assert status == 400 and "bigger" in refused["message"], refused

    with held_writable(image, image_layout / "images" / "ubuntu24--base_image.sif", "jct-disk-test-holder"):
        status, refused = await api("POST", "overlays", "env", "resize", body={"size_mb": 512})
        assert status == 409 and "in use" in refused["message"], refused

    before_kib, inode = container_df_kib(image_layout, image), os.stat(image).st_ino
    status, data = await api("POST", "overlays", "env", "resize", body={"size_mb": 512})
    assert status == 202, data
    job = await wait_job(api, data["job"]["id"])
    assert job["state"] == "succeeded", (job["error"], job["log"])
    after_kib = container_df_kib(image_layout, image)
    print(f"df inside the container: {before_kib} KiB -> {after_kib} KiB")
    assert after_kib > 1.9 * before_kib
    assert os.stat(image).st_ino != inode, "grown on a copy that replaced the env"
    _, data = await api("GET", "disk")
    env = {row["name"]: row for row in data["envs"]}["env"]
    assert env["size"] == env["fs_total"] == 512 * MiB
    assert not list((image_layout / "images").glob(".*")), "no work file left"
