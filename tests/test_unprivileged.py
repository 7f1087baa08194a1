"""An ordinary user: CondaTainer's ``--fakeroot`` rule and what to tell the admin.

Runs for whoever runs the suite: ``scripts/test.sh`` runs it as root and again as an ordinary
user (``jctuser``), so both sides of the rule meet a real Apptainer.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess

import pytest
from conftest import acquired, exec_in, make_plan, running_instances

from kernel_provider.host import probes
from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.host.containers import FakerootUnavailableError, check_fakeroot
from kernel_provider.host.instances import InstanceManager
from kernel_provider.host.probes import ImageProbe
from kernel_provider.host.state import StateStore
from kernel_provider.model.overlays import scan

ROOT = os.getuid() == 0


# --- unit: /etc/subuid and the advice -------------------------------------------------------


@pytest.fixture
def subids(tmp_path, monkeypatch):
    """Point the probes at private subuid/subgid files; return a writer for both."""
    subuid, subgid = tmp_path / "subuid", tmp_path / "subgid"
    monkeypatch.setattr(probes, "SUBUID_FILE", str(subuid))
    monkeypatch.setattr(probes, "SUBGID_FILE", str(subgid))
    monkeypatch.setattr(probes, "user_name", lambda uid: {0: "root", 1234: "alice"}.get(uid, str(uid)))

    def write(uid_lines: str, gid_lines: str | None = None) -> None:
        subuid.write_text(uid_lines)
        subgid.write_text(uid_lines if gid_lines is None else gid_lines)

    write("")
    return write


def test_subid_ranges_by_name_or_uid(subids):
    subids("bob:100000:65536\nalice:165536:65536\n")
    assert probes.missing_subids(1234) is None
    subids("bob:100000:65536\n1234:165536:65536\n")
    assert probes.missing_subids(1234) is None
    subids("bob:100000:65536\n# comment\nbroken line\n")
    advice = probes.missing_subids(1234)
    assert advice.startswith(
        "alice has no /etc/subuid entry; an admin must add 'alice:165536:65536' to /etc/subuid and /etc/subgid"
    )
    assert "usermod --add-subuids 165536-231071 --add-subgids 165536-231071 alice" in advice
    subids("alice:165536:65536\n", gid_lines="")  # a subuid range alone is not enough
    assert "alice:231072:65536" in probes.missing_subids(1234)
    assert probes.missing_subids(0) is None  # root never needs a range


def test_fakeroot_problem_only_without_range_and_without_userns(subids, monkeypatch):
    monkeypatch.setattr(probes, "unprivileged_userns", lambda: True)
    assert probes.fakeroot_problem(1234) is None  # Apptainer falls back to a root-mapped namespace
    monkeypatch.setattr(probes, "unprivileged_userns", lambda: False)
    problem = probes.fakeroot_problem(1234)
    assert "alice has no /etc/subuid entry; an admin must add 'alice:100000:65536'" in problem
    assert "user namespaces are disabled" in problem
    subids("alice:100000:65536\n")
    assert probes.fakeroot_problem(1234) is None  # a setuid Apptainer maps the range itself
    assert probes.fakeroot_problem(0) is None


def test_unprivileged_userns_reads_the_kernel_switches():
    expected = True
    for path in ("/proc/sys/user/max_user_namespaces", "/proc/sys/kernel/unprivileged_userns_clone"):
        if os.path.exists(path) and open(path).read().strip() == "0":
            expected = False
    assert probes.unprivileged_userns() is expected


# --- integration: the real images, as this user ---------------------------------------------


@pytest.mark.integration
def test_debugfs_reads_image_owners_for_this_user(user_layout):
    """The probe behind the rule works without root (debugfs is in /sbin, often not on PATH)."""
    own = user_layout / "images" / "own.img"
    subprocess.run(
        ["apptainer", "overlay", "create", "--size", "64", "--create-dir", "/ext3/env", str(own)],
        check=True,
        capture_output=True,
    )
    probe = ImageProbe()
    config = CondaTainerConfig()
    catalog = scan(config.image_dirs, config.distro)
    assert probe.image_owner(catalog.by_name["env"]) == 0  # built by root (scripts/build-images.sh)
    assert probe.image_owner(catalog.by_name["own"]) == os.getuid()
    assert make_plan("python/3.11", "own", writable=True).fakeroot is False
    assert make_plan("python/3.11", "env", writable=True).fakeroot is (not ROOT)
    assert make_plan("python/3.11", "env", writable=False).fakeroot is False


@pytest.mark.integration
def test_root_owned_env_is_writable_through_fakeroot(user_layout):
    """CondaTainer's rule for real: an ordinary user writes a root-owned .img with --fakeroot."""
    plan = make_plan("python/3.11", "env", writable=True)
    manager = InstanceManager(CondaTainerConfig())

    async def scenario():
        async with acquired(manager, plan) as instance:
            script = "import os; open('/ext3/env/fakeroot-probe', 'w').write('x'); print(os.getuid())"
            return await exec_in(manager, instance, ["python", "-c", script])

    result = asyncio.run(scenario())
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "0"  # root inside: real root, or fakeroot for an ordinary user
    listing = subprocess.run(
        [
            shutil.which("debugfs") or "/sbin/debugfs",
            "-R",
            "ls -l /upper/ext3/env",
            str(user_layout / "images" / "env.img"),
        ],
        capture_output=True,
        text=True,
    ).stdout
    assert "fakeroot-probe" in listing


@pytest.mark.integration
def test_fakeroot_unavailable_says_what_the_admin_must_add(user_layout, tmp_path, monkeypatch):
    """No subuid range and no user namespaces: refuse before Apptainer, with the admin's fix."""
    (tmp_path / "empty").write_text("")
    monkeypatch.setattr(probes, "SUBUID_FILE", str(tmp_path / "empty"))
    monkeypatch.setattr(probes, "SUBGID_FILE", str(tmp_path / "empty"))
    monkeypatch.setattr(probes, "unprivileged_userns", lambda: False)
    plan = make_plan("python/3.11", "env", writable=True)
    manager = InstanceManager(CondaTainerConfig())
    before = running_instances()
    if ROOT:
        assert not plan.fakeroot  # root writes any image without --fakeroot
        check_fakeroot(make_plan("python/3.11", "env", writable=True, fakeroot=True))  # and is never refused
        return
    user = probes.user_name(os.getuid())
    with pytest.raises(FakerootUnavailableError) as error:
        asyncio.run(manager.acquire(plan, "k", share=False))
    message = str(error.value)
    assert "env.img belongs to another user (or root)" in message
    assert (
        f"{user} has no /etc/subuid entry; an admin must add '{user}:100000:65536' to /etc/subuid and /etc/subgid"
        in message
    )
    assert running_instances() == before
    assert StateStore(CondaTainerConfig().instance_state_dir).ours() == []
