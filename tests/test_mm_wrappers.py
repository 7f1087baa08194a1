"""The test base image's CondaTainer wrappers (``mm-create`` … ``mm-list``), run for real.

Each test mounts a fresh copy of ``testenv.img`` read-write in the base image, exactly as
CondaTainer does for ``mm-*`` (``--overlay env.img:rw``, ``CNT_CONDA_PREFIX=/ext3/env``), and
installs real conda packages from the local channel of ``tests/channel.py``. The channel root is
bound at the same path; ``MAMBA_CHANNEL_ALIAS`` points the channel names ``conda-forge`` and
``bioconda`` (CondaTainer's defaults, saved in ``.condarc``) at it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from kernel_provider.host.process import apptainer_env

pytestmark = pytest.mark.integration

BASE_IMAGE = "ubuntu24--base_image.sif"
SNAPSHOT = (
    "cd /ext3/env && find . -printf '%p %y %s %m\\n' | LC_ALL=C sort && "
    'for f in .condarc conda-meta/*; do [ -f "$f" ] && md5sum "$f"; done; true'
)


class Env:
    """A writable env overlay and a way to run commands in the base image with it."""

    def __init__(self, img: Path, base: Path, channel):
        self.img = img
        self.base = base
        self.channel = channel

    def run(
        self,
        *argv: str,
        writable: bool = True,
        conda_prefix: bool = True,
        alias: bool = True,
        check: bool = False,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess:
        cmd = [
            "apptainer",
            "exec",
            "--containall",
            "--cleanenv",
            # CondaTainer's rule: an ordinary user writes the root-built env with --fakeroot.
            *(["--fakeroot"] if writable and os.getuid() else []),
            "--overlay",
            f"{self.img}:{'rw' if writable else 'ro'}",
            "--bind",
            str(self.channel.root),
            "--env",
            "PATH=/ext3/env/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ]
        if conda_prefix:
            cmd += ["--env", "CNT_CONDA_PREFIX=/ext3/env"]
        if alias:
            cmd += ["--env", f"MAMBA_CHANNEL_ALIAS={self.channel.alias}"]
        cmd += [str(self.base), *argv]
        result = subprocess.run(cmd, capture_output=True, text=True, env=apptainer_env(), timeout=timeout)
        if check and result.returncode != 0:
            pytest.fail(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def sh(self, script: str, **kwargs) -> str:
        return self.run("sh", "-c", script, check=True, **kwargs).stdout

    def packages(self) -> dict[str, dict]:
        out = self.run("mm-list", "--json", check=True, writable=False).stdout
        return {p["name"]: p for p in json.loads(out)}

    def snapshot(self) -> str:
        return self.sh(SNAPSHOT, writable=False)


@pytest.fixture
def env(user_layout, built_images, conda_channel) -> Env:
    return Env(user_layout / "images" / "env.img", built_images / BASE_IMAGE, conda_channel)


def test_create_installs_lists_and_records_history(env):
    result = env.run("mm-create", "-y", "-c", env.channel.url, "zlib", "demo-tool")
    assert result.returncode == 0, result.stderr
    assert "demo-tool" in result.stdout and "Transaction finished" in result.stdout

    packages = env.packages()
    assert {name: p["version"] for name, p in packages.items()} == {
        "zlib": "1.3.1",
        "demo-tool": "1.0",
        "libdemo": "2.0",
    }
    zlib = packages["zlib"]
    assert zlib["channel"] == "conda-forge" and zlib["platform"] == "linux-64"
    assert zlib["base_url"] == env.channel.url
    assert zlib["dist_name"] == f"zlib-1.3.1-{zlib['build_string']}"
    assert zlib["url"].startswith(env.channel.url + "/linux-64/zlib-1.3.1-")

    out = env.sh(
        "cat /ext3/env/include/zlib.h /ext3/env/share/libdemo/VERSION; demo-tool; "
        "cat /ext3/env/.condarc; cat /ext3/env/conda-meta/history; "
        "echo unreadable:; find /ext3/env ! -perm -o+r ! -name .wh..wh..opq; echo end",
        writable=False,
    )
    # (.wh..wh..opq: fuse-overlayfs, used without root, marks new directories opaque with such files)
    assert "zlib 1.3.1" in out
    assert "demo-tool 1.0 libdemo 2.0" in out  # on PATH from /ext3/env/bin
    # -c given without conda-forge: CondaTainer appends conda-forge and saves both.
    assert f"channels:\n  - {env.channel.url}\n  - conda-forge\n" in out
    assert "==> " in out and "# cmd: mm-create -y -c " in out
    assert f"+{env.channel.url}/linux-64::zlib-1.3.1-{zlib['build_string']}" in out
    assert '# update specs: ["zlib", "demo-tool"]' in out
    assert "unreadable:\nend" in out, out

    text = env.run("mm-list", "demo", writable=False).stdout
    assert "demo-tool" in text and "libdemo" in text and "zlib" not in text


def test_defaults_are_condatainers_channels_and_install_uses_condarc(env):
    # As CondaTainer initialises an env: no -c, so conda-forge + bioconda.
    env.run("mm-create", "-y", "zlib", check=True)
    assert env.sh("cat /ext3/env/.condarc", writable=False) == "channels:\n  - conda-forge\n  - bioconda\n"

    # mm-install without -c: the channels of .condarc; a noarch: python package and its python.
    env.run("mm-install", "-y", "demopkg", check=True)
    assert set(env.packages()) == {"zlib", "demopkg", "python"}
    out = env.sh(
        "/ext3/env/bin/python -c 'import demopkg, sys; print(demopkg.__version__, demopkg.__file__, sys.prefix)'"
        " && python -c 'import demopkg; print(demopkg.__version__)'",
        writable=False,
    )
    assert out.splitlines() == ["0.1 /ext3/env/lib/python3.11/site-packages/demopkg/__init__.py /ext3/env", "0.1"]


def test_condarc_channels_alone_without_alias(env):
    env.run("mm-create", "-y", "-c", env.channel.url, "zlib", check=True)
    # What mm-channels leaves: only the local channel (no alias in the environment now).
    env.sh(f"printf 'channels:\\n  - {env.channel.url}\\n' > /ext3/env/.condarc")
    result = env.run("mm-install", "-y", "demo-tool", alias=False)
    assert result.returncode == 0, result.stderr
    assert env.packages()["libdemo"]["version"] == "2.0"

    # A channel that is not there: a clear error, nothing changed.
    env.sh("printf 'channels:\\n  - file:///nonexistent/channel\\n' > /ext3/env/.condarc")
    before = env.snapshot()
    result = env.run("mm-install", "-y", "demopkg", alias=False)
    assert result.returncode != 0
    assert "/nonexistent/channel" in result.stderr
    assert env.snapshot() == before


def test_install_update_and_pins(env):
    env.run("mm-create", "-y", "-c", env.channel.url, "zlib", check=True)
    env.run("mm-install", "-y", "demo-tool", "libdemo=1.0", check=True)
    assert env.sh("demo-tool", writable=False).strip() == "demo-tool 1.0 libdemo 1.0"

    # install keeps what is installed unless asked: demo-tool again changes nothing.
    result = env.run("mm-install", "-y", "demo-tool", check=True)
    assert "already installed" in result.stdout

    env.run("mm-update", "-y", "libdemo", check=True)
    assert env.sh("demo-tool", writable=False).strip() == "demo-tool 1.0 libdemo 2.0"
    history = env.sh("cat /ext3/env/conda-meta/history", writable=False)
    assert f"-{env.channel.url}/linux-64::libdemo-1.0-" in history
    assert '# update specs: ["libdemo"]' in history

    # A pin (what mm-pin writes) holds in every later solve.
    env.sh("echo 'libdemo 2.0' > /ext3/env/conda-meta/pinned")
    before = env.snapshot()
    result = env.run("mm-install", "-y", "libdemo=1.0")
    assert result.returncode != 0
    assert "libdemo" in result.stderr
    assert env.snapshot() == before


def test_remove(env):
    env.run("mm-create", "-y", "-c", env.channel.url, "zlib", "demo-tool", "demopkg", check=True)
    result = env.run("mm-remove", "-y", "demopkg")
    assert result.returncode == 0, result.stderr
    # python came only for demopkg: pruned with it, as micromamba does.
    assert set(env.packages()) == {"zlib", "demo-tool", "libdemo"}
    files = env.sh("ls /ext3/env/bin; ls /ext3/env/lib/python3.11/site-packages 2>/dev/null; true", writable=False)
    assert files.split() == ["demo-tool"]
    history = env.sh("cat /ext3/env/conda-meta/history", writable=False)
    last = history[history.rindex("==> ") :]
    assert "# cmd: mm-remove -y demopkg" in last
    assert f"-{env.channel.url}/noarch::demopkg-0.1-" in last
    assert f"-{env.channel.url}/linux-64::python-3.11.2-" in last
    assert last.rstrip().endswith('# remove specs: ["demopkg"]')

    # Not installed: an error, nothing changed.
    before = env.snapshot()
    result = env.run("mm-remove", "-y", "demopkg")
    assert result.returncode != 0
    assert "demopkg" in result.stderr and "not installed" in result.stderr
    assert env.snapshot() == before

    # Removing a dependency removes what depends on it.
    env.run("mm-remove", "-y", "libdemo", check=True)
    assert set(env.packages()) == {"zlib"}
    assert env.run("sh", "-c", "test -e /ext3/env/bin/demo-tool", writable=False).returncode != 0


def test_failures_leave_the_env_unchanged(env):
    env.run("mm-create", "-y", "-c", env.channel.url, "zlib", check=True)
    before = env.snapshot()

    unknown = env.run("mm-install", "-y", "nosuchpkg")
    assert unknown.returncode != 0
    assert "nosuchpkg" in unknown.stderr
    assert env.snapshot() == before

    unsolvable = env.run("mm-install", "-y", "demo-broken")
    assert unsolvable.returncode != 0
    assert "libdemo >=3" in unsolvable.stderr
    assert env.snapshot() == before

    dry = env.run("mm-install", "-y", "--dry-run", "demo-tool")
    assert dry.returncode == 0 and "demo-tool" in dry.stdout and "Dry run" in dry.stdout
    assert env.snapshot() == before

    # Without -y, a "no" keeps everything as it was.
    declined = subprocess.run(
        [
            "apptainer",
            "exec",
            "--containall",
            "--cleanenv",
            *(["--fakeroot"] if os.getuid() else []),
            "--overlay",
            f"{env.img}:rw",
            "--bind",
            str(env.channel.root),
            "--env",
            "CNT_CONDA_PREFIX=/ext3/env",
            "--env",
            f"MAMBA_CHANNEL_ALIAS={env.channel.alias}",
            str(env.base),
            "mm-install",
            "demo-tool",
        ],
        input="n\n",
        capture_output=True,
        text=True,
        env=apptainer_env(),
        timeout=120,
    )
    assert declined.returncode != 0 and "Confirm changes" in declined.stdout
    assert env.snapshot() == before


def test_create_failure_creates_nothing(env):
    result = env.run("mm-create", "-y", "-c", env.channel.url, "zlib", "nosuchpkg")
    assert result.returncode != 0
    assert "nosuchpkg" in result.stderr
    assert env.sh("ls -A /ext3/env", writable=False) == ""


def test_needs_a_writable_env(env):
    result = env.run("mm-install", "-y", "zlib", conda_prefix=False)
    assert result.returncode != 0
    assert "CNT_CONDA_PREFIX is not set" in result.stderr and "no writable env mounted" in result.stderr

    result = env.run("mm-create", "-y", "zlib", writable=False)
    assert result.returncode != 0
    assert "not writable" in result.stderr


def test_clean_removes_the_package_cache(env):
    env.run("mm-create", "-y", "-c", env.channel.url, "zlib", "demo-tool", check=True)
    assert "libdemo-2.0-" in env.sh("ls /ext3/env/pkgs", writable=False)
    env.run("mm-clean", "-a", "-y", "-q", check=True)  # as CondaTainer runs it after mm-create
    out = env.sh("ls -A /ext3/env; demo-tool", writable=False)
    assert "pkgs" not in out.split()
    assert "demo-tool 1.0 libdemo 2.0" in out  # installed files do not depend on the cache
    # and a later install fetches again
    env.run("mm-install", "-y", "demopkg", check=True)
    assert "demopkg" in env.packages()
