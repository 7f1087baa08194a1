"""An install that would not fit in its env is refused before it starts: through the REST API (the
env on a copy, and in a kernel's instance) and the ``%condatainer`` magic, the env unchanged; once
there is room, the same install goes through. The size comparison itself is a pure function."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess

import pytest
from conftest import env_kernel, exec_on_env, held_writable, run_cell, wait_job

from kernel_provider.incontainer import txplan
from kernel_provider.incontainer.constants import ENV_PREFIX

KiB, MiB = 1024, 1024 * 1024
INSTALL = {"specs": ["demo-tool"]}  # demo-tool and libdemo: about 2 KiB to download, 135 KiB estimated


@pytest.fixture
def jp_server_config(kernel_env):
    return {"ServerApp": {"jpserver_extensions": {"kernel_provider": True}}}


def image_state(image) -> tuple:
    """What must not change when a change is refused: the bytes, the inode, the times."""
    stat = os.stat(image)
    with open(image, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    return digest, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def refusal_pattern(env: str, name: str, size_mib: int, in_use: bool) -> str:
    advice = "Shut down the kernels using it, grow it" if in_use else "Grow it"
    return (
        rf"{re.escape(env)} has [\d.]+ (B|KiB) free; this install needs about [\d.]+ KiB\. {advice} "
        rf"\(the CondaTainer panel's Disk section: Grow…, or jupyter condatainer env resize {re.escape(name)} "
        rf"--size {size_mib}\) and try again\."
    )


FILL = f"""
import os


def fill(leave):
    \"""Fill the env until {{leave}} bytes are left. In steps, each synced, so that statfs is exact
    (FUSE mounts count written data late) and the file system never runs full (that stalls FUSE).\"""
    fd = os.open("{ENV_PREFIX}/filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    while True:
        stat = os.statvfs("{ENV_PREFIX}")
        gap = stat.f_bavail * stat.f_frsize - leave
        if gap < 16 * 1024:
            break
        os.write(fd, bytes(gap // 2))
        os.fsync(fd)
    os.close(fd)
"""


@pytest.mark.integration
async def test_rest_refuses_an_install_that_would_not_fit_then_grown_it_fits(channel_env, api, kernel_env):
    _, data = await api("POST", "overlays", body={"name": "tight", "size_mb": 64, "packages": ["zlib"]})
    assert (await wait_job(api, data["job"]["id"]))["state"] == "succeeded"
    images = kernel_env / "images"
    image = images / "tight.img"
    exec_on_env(image, images / "ubuntu24--base_image.sif", ["python3", "-c", f"{FILL}\nfill({48 * KiB})"])
    with held_writable(image, images / "ubuntu24--base_image.sif", "jct-room-holder"):
        status, data = await api("POST", "overlays", "tight", "packages", body=INSTALL)
        assert status == 409 and data["message"].startswith("tight is in use by another program: pid "), data
    before, (_, history) = image_state(image), await api("GET", "overlays", "tight", "history")

    status, preview = await api("POST", "overlays", "tight", "packages", body={**INSTALL, "dry_run": True})
    assert status == 200 and preview["plan"]["space_warning"], preview
    assert preview["plan"]["env_free_bytes"] < preview["plan"]["space_needed_bytes"] < 200 * KiB
    status, data = await api("POST", "overlays", "tight", "packages", body=INSTALL)
    assert status == 202, data
    job = await wait_job(api, data["job"]["id"])
    print("refused:", job["error"])
    assert job["state"] == "failed" and job["error"] == preview["plan"]["space_warning"]
    assert re.fullmatch(refusal_pattern("tight.img", "tight", 128, in_use=False), job["message"]), job["message"]
    assert "copying" not in "\n".join(job["log"]), "refused before the env was copied"
    assert image_state(image) == before, "the refused install changed the env"
    assert (await api("GET", "overlays", "tight", "history"))[1] == history
    assert not list(images.glob(".*")), "no work file left"

    status, data = await api("POST", "overlays", "tight", "resize", body={"size_mb": 128})
    assert status == 202 and (await wait_job(api, data["job"]["id"]))["state"] == "succeeded"
    _, data = await api("POST", "overlays", "tight", "packages", body=INSTALL)
    job = await wait_job(api, data["job"]["id"])
    assert job["state"] == "succeeded", (job["error"], job["log"])
    _, listed = await api("GET", "overlays", "tight", "packages")
    assert "demo-tool" in {p["name"] for p in listed["packages"]}


@pytest.mark.integration
async def test_the_magic_and_rest_refuse_in_a_kernels_instance(channel_env, api, kernel_env, jp_serverapp):
    """With the env mounted by a kernel: the magic refuses (also the --dry-run's apply), the REST
    install too (its free space read in the kernel's instance), the env's packages and history
    unchanged; with room made, the magic's install goes through."""
    async with env_kernel(api, jp_serverapp, "tightk", ["zlib"]) as (_, client):
        _, error = await run_cell(client, f"{FILL}\nfill({64 * KiB})")
        assert error is None, error
        history, _ = await run_cell(client, "%condatainer history --json")
        _, refused = await run_cell(client, "%condatainer install demo-tool")
        shown, _ = await run_cell(client, "%condatainer install demo-tool --dry-run")
        _, applied = await run_cell(client, "%condatainer apply")
        _, data = await api("POST", "overlays", "tightk", "packages", body=INSTALL)
        job = await wait_job(api, data["job"]["id"])
        listed, _ = await run_cell(client, "%condatainer list demo")
        history_after, _ = await run_cell(client, "%condatainer history --json")
        _, error = await run_cell(client, f"import os; os.remove('{ENV_PREFIX}/filler')")
        assert error is None, error
        _, installed = await run_cell(client, "%condatainer install demo-tool")
        listed_after, _ = await run_cell(client, "%condatainer list demo")
    print("magic:", refused["evalue"] if refused else refused)
    pattern = refusal_pattern("tightk.img", "tightk", 256, in_use=True)
    assert refused["ename"] == "CondaTainerError" and re.fullmatch(pattern, refused["evalue"].splitlines()[0])
    # The numbers may move a little between the dry runs (the solver's cache is in the env).
    assert applied["ename"] == "CondaTainerError" and re.fullmatch(pattern, applied["evalue"].splitlines()[0])
    assert re.search(f"Warning: {pattern}", shown), shown
    assert job["state"] == "failed" and re.fullmatch(pattern, job["message"]), job
    assert "no packages matching" in listed and history_after == history, "the refused install changed the env"
    assert installed is None, installed
    assert "demo-tool" in listed_after


def plan(download: int, count: int) -> dict:
    return {"download_bytes": download, "download_count": count}


def test_the_need_is_three_times_the_download_and_a_little_a_package():
    assert txplan.space_needed(plan(0, 0)) == 0
    assert txplan.space_needed(plan(10 * MiB, 4)) == 30 * MiB + 4 * 64 * KiB


@pytest.mark.parametrize(
    ("free", "refused"), [(30 * MiB + 128 * KiB, False), (30 * MiB + 128 * KiB - 1, True), (0, True)]
)
def test_refused_exactly_when_the_need_exceeds_the_free_space(free, refused):
    message = txplan.space_refusal(
        plan(10 * MiB, 2),
        verb="install",
        env="demo.img",
        name="demo",
        total_bytes=64 * MiB,
        free_bytes=free,
        in_use=False,
    )
    assert bool(message) == refused
    if refused:
        first = message.splitlines()[0]
        assert first.startswith(f"demo.img has {txplan._bytes(free)} free; this install needs about 30.1 MiB.")
        assert first.endswith("jupyter condatainer env resize demo --size 128) and try again.")
        assert "Nothing was changed" in message.splitlines()[1]


def test_the_suggested_size_doubles_or_fits_the_change_twice_in_steps_of_64_mib():
    assert txplan.suggested_size_mib(64 * MiB, 1 * MiB, 2 * MiB) == 128
    assert txplan.suggested_size_mib(114 * MiB, 0, 0) == 256, "statfs's size of a 128 MiB env: as the superblock's"
    assert txplan.suggested_size_mib(64 * MiB, 1 * MiB, 201 * MiB) == 512


def test_an_env_in_use_is_told_to_free_itself_first():
    message = txplan.space_refusal(
        plan(MiB, 1), verb="update", env="x.img", name="x", total_bytes=MiB, free_bytes=0, in_use=True
    )
    assert "this update needs about" in message and "Shut down the kernels using it, grow it" in message


def test_the_free_space_a_change_can_count_on_leaves_out_roots_reserve(tmp_path):
    from kernel_provider.envs.disk import read_usage
    from kernel_provider.host.debugfs import find_sbin_tool

    image = tmp_path / "env.img"
    image.write_bytes(b"")
    os.truncate(image, 8 * MiB)
    subprocess.run([find_sbin_tool("mke2fs") or "mke2fs", "-q", "-F", "-t", "ext3", "-m", "5", str(image)], check=True)
    usage = read_usage(str(image))
    assert usage.total == 8 * MiB and 0 < usage.available < usage.free
    assert usage.free - usage.available == usage.reserved == pytest.approx(0.05 * usage.total, rel=0.02)
