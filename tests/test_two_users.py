"""Two users on one machine: instances, state and orphan sweeps stay per user.

Root acts as the ordinary test users made by ``scripts/setup-testuser.sh`` (``runuser``), so this
module runs in the root pass of ``scripts/test.sh`` (the ordinary-user pass leaves it out).
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from conftest import running_instances

from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.host.instances import InstanceManager
from kernel_provider.host.probes import ImageProbe
from kernel_provider.model.overlays import scan
from kernel_provider.model.plan import StackRequest, plan_container

pytestmark = pytest.mark.integration

USER = os.environ.get("JCT_TEST_USER", "jctuser")  # has /etc/subuid and /etc/subgid ranges
NOSUB_USER = os.environ.get("JCT_TEST_USER_NOSUB", "jctnosub")  # has none

# Starts an instance of python/3.11 and exits without stopping it: a crashed server's orphan.
START_AND_CRASH = textwrap.dedent(
    """
    import asyncio, os
    from kernel_provider.host.config import CondaTainerConfig
    from kernel_provider.host.instances import InstanceManager
    from kernel_provider.model.overlays import scan
    from kernel_provider.model.plan import StackRequest, plan_container
    from kernel_provider.host.probes import ImageProbe
    config = CondaTainerConfig()
    plan = plan_container(StackRequest(overlays=["python/3.11"]), scan(config.image_dirs, config.distro),
                          ImageProbe(), environ=os.environ, cwd=os.getcwd(), uid=os.getuid())
    print(asyncio.run(InstanceManager(config).acquire(plan, "k", share=False)).name)
    """
)

# Writes into a root-owned env .img through --fakeroot (which the planner adds), then stops.
WRITE_ROOT_OWNED_ENV = textwrap.dedent(
    """
    import asyncio, os, sys
    from kernel_provider.model import command
    from kernel_provider.host import probes
    from kernel_provider.host.config import CondaTainerConfig
    from kernel_provider.host.instances import InstanceManager
    from kernel_provider.host.process import run
    from kernel_provider.model.overlays import scan
    from kernel_provider.model.plan import StackRequest, plan_container
    from kernel_provider.host.probes import ImageProbe
    if sys.argv[1] == "no-userns":
        probes.unprivileged_userns = lambda: False  # what a node without user namespaces reports
    config = CondaTainerConfig()
    plan = plan_container(StackRequest(overlays=["python/3.11", "env"], writable=True),
                          scan(config.image_dirs, config.distro), ImageProbe(),
                          environ=os.environ, cwd=os.getcwd(), uid=os.getuid())
    assert plan.fakeroot
    manager = InstanceManager(config)
    async def scenario():
        instance = await manager.acquire(plan, "k", share=False)
        try:
            argv = command.instance_exec_argv(manager.apptainer, instance.name, str(instance.env_file),
                                              ["sh", "-c", "touch /ext3/env/by-fakeroot && id -u"])
            result = await run(argv, 60)
            print(result.returncode, result.stdout.strip(), result.stderr.strip()[-300:])
        finally:
            await manager.release(instance, "k")
    try:
        asyncio.run(scenario())
    except Exception as error:
        print(f"{type(error).__name__}: {error}")
    """
)


class OtherUser:
    """Commands run as an ordinary user, with a private HOME-like tree under /tmp."""

    def __init__(self, name: str, images: Path):
        try:
            pwd.getpwnam(name)
        except KeyError:
            pytest.fail(f"test user {name} is missing: run scripts/setup-testuser.sh as root (scripts/test.sh does)")
        self.name = name
        self.root = Path(tempfile.mkdtemp(prefix=f"jct-{name}-"))
        shutil.chown(self.root, name, name)
        self.env = {
            "HOME": str(self.root),
            "USER": name,
            "LOGNAME": name,
            "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "XDG_STATE_HOME": str(self.root / "state"),
            "XDG_CACHE_HOME": str(self.root / "cache"),
            "JUPYTER_RUNTIME_DIR": str(self.root / "runtime"),
            "CNT_EXTRA_IMAGE_DIRS": str(images),
        }

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        env_args = [f"{key}={value}" for key, value in self.env.items()]
        result = subprocess.run(
            ["runuser", "-u", self.name, "--", "env", "-i", *env_args, *argv],
            capture_output=True,
            text=True,
            cwd=self.root,
            timeout=180,
        )
        if check:
            assert result.returncode == 0, f"{argv} as {self.name}: {result.stdout}{result.stderr}"
        return result

    def python(self, script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-c", script, *args, check=check)

    def jupyter(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(str(Path(sys.executable).parent / "jupyter"), "condatainer", *args, check=check)

    def running(self) -> set[str]:
        out = self.run("apptainer", "instance", "list").stdout
        return {line.split()[0] for line in out.splitlines()[1:] if line.strip()}

    def cleanup(self) -> None:
        for name in self.running():
            if name.startswith("jct-"):
                self.run("apptainer", "instance", "stop", name, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def other_user(built_images):
    if os.getuid() != 0:
        pytest.fail("this module acts as other users: run it as root (scripts/test.sh's root pass does)")
    user = OtherUser(USER, built_images)
    yield user
    user.cleanup()


@pytest.fixture
def nosub_user(built_images, tmp_path):
    if os.getuid() != 0:
        pytest.fail("this module acts as other users: run it as root (scripts/test.sh's root pass does)")
    user = OtherUser(NOSUB_USER, built_images)
    # Its own image directory: the shared read-only images plus a copy of the root-built env.
    images = user.root / "images"
    images.mkdir()
    for name in ("ubuntu24--base_image.sif", "python--3.11.sqf"):
        shutil.copy(built_images / name, images / name)
    shutil.copy(built_images / "python--3.11.sqf.env", images / "python--3.11.sqf.env")
    subprocess.run(["cp", "--sparse=always", str(built_images / "testenv.img"), str(images / "env.img")], check=True)
    subprocess.run(["chown", "-R", f"{NOSUB_USER}:{NOSUB_USER}", str(images)], check=True)
    user.env["CNT_EXTRA_IMAGE_DIRS"] = str(images)
    yield user
    user.cleanup()


def test_two_users_never_see_or_stop_each_others_instances(user_layout, other_user):
    # The other user's server crashes and leaves an orphan instance behind.
    theirs = other_user.python(START_AND_CRASH).stdout.split()[-1]
    assert theirs.startswith("jct-") and theirs in other_user.running()

    config = CondaTainerConfig()
    manager = InstanceManager(config)
    plan = plan_container(
        StackRequest(overlays=["python/3.11"]),
        scan(config.image_dirs, config.distro),
        ImageProbe(),
        environ=os.environ,
        cwd=os.getcwd(),
        uid=os.getuid(),
    )

    async def ours_then_sweep():
        instance = await manager.acquire(plan, "k", share=False)
        return instance, await manager.sweep_orphans()

    mine, swept = asyncio.run(ours_then_sweep())
    try:
        assert swept == [], "root's sweep must not touch another user's orphan"
        assert theirs not in running_instances() and mine.name in running_instances()
        assert theirs in other_user.running()

        # The other user's CLI sees only its own instance, cannot stop root's, and its
        # orphan sweep stops only its own orphan.
        listed = json.loads(other_user.jupyter("instances", "list", "--json").stdout)
        assert [row["name"] for row in listed] == [theirs] and not listed[0]["owner_alive"]
        refused = other_user.jupyter("instances", "stop", mine.name, check=False)
        assert refused.returncode != 0 and "not a jupyter-condatainer instance of this user" in refused.stderr
        swept_by_them = other_user.jupyter("instances", "stop", "--orphans").stdout
        assert f"stopped orphan {theirs}" in swept_by_them
        assert mine.name not in swept_by_them
        assert theirs not in other_user.running()
        assert mine.name in running_instances()
        assert json.loads(other_user.jupyter("instances", "list", "--json").stdout) == []
    finally:
        asyncio.run(manager.release(mine, "k"))
    assert mine.name not in running_instances()


def test_fakeroot_without_subuid_range(nosub_user):
    """No /etc/subuid range: Apptainer's root-mapped fallback works when user namespaces are on;
    without them the start is refused with what the admin must add."""
    fallback = nosub_user.python(WRITE_ROOT_OWNED_ENV, "userns").stdout.strip().splitlines()[-1]
    assert fallback.startswith("0 0"), fallback  # exit 0, uid 0 inside
    listing = subprocess.run(
        [
            shutil.which("debugfs") or "/sbin/debugfs",
            "-R",
            "ls -l /upper/ext3/env",
            str(nosub_user.root / "images" / "env.img"),
        ],
        capture_output=True,
        text=True,
    ).stdout
    assert "by-fakeroot" in listing

    refused = nosub_user.python(WRITE_ROOT_OWNED_ENV, "no-userns").stdout.strip().splitlines()[-1]
    assert refused.startswith("FakerootUnavailableError: env.img belongs to another user (or root)"), refused
    assert f"{NOSUB_USER} has no /etc/subuid entry; an admin must add '{NOSUB_USER}:" in refused
    assert "to /etc/subuid and /etc/subgid" in refused
    assert nosub_user.running() == set()
