"""Locks and process handling that concurrent kernel starts and interrupted cells rely on.

Unit tests: no Apptainer. Where a real tool is cheap (pip, ``sleep``), it runs for real.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kernel_provider.host import python as probes
from kernel_provider.host import supply
from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.host.instances import InstanceManager
from kernel_provider.host.process import InstanceError
from kernel_provider.incontainer import proctree

pytestmark = pytest.mark.timeout(60)


def python_argv(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


FAILING_PIP = python_argv("import sys; sys.exit('ERROR: no network here')")
WORKING_PIP = "import pathlib, sys, time; time.sleep(0.5); (pathlib.Path(sys.argv[1]) / 'ipykernel').mkdir()"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "jupyter-condatainer" / "ipykernel"


def fake_pip(monkeypatch, argv_for_target) -> None:
    monkeypatch.setattr(supply, "pip_argv", lambda version, target, glibc="": argv_for_target(target))


def test_a_failed_ipykernel_build_fails_the_next_start_promptly_not_forever(cache, monkeypatch):
    """A node without network: every start fails with pip's message; once pip works, one succeeds."""
    fake_pip(monkeypatch, lambda target: FAILING_PIP)

    async def scenario():
        for _ in range(2):
            with pytest.raises(InstanceError, match="no network here"):
                await asyncio.wait_for(supply.ensure_ipykernel((3, 11)), 10)
        fake_pip(monkeypatch, lambda target: python_argv(WORKING_PIP, target))
        return await asyncio.wait_for(supply.ensure_ipykernel((3, 11)), 10)

    built = asyncio.run(scenario())
    assert (built / "ipykernel").is_dir()
    assert sorted(p.name for p in cache.iterdir()) == ["cp311", "cp311.lock"]  # no staging left


def test_concurrent_starts_build_ipykernel_once(cache, monkeypatch):
    builds = []

    def counted(target: str) -> list[str]:
        builds.append(target)
        return python_argv(WORKING_PIP, target)

    fake_pip(monkeypatch, counted)

    async def scenario():
        return await asyncio.gather(*(supply.ensure_ipykernel((3, 12)) for _ in range(3)))

    assert len(set(asyncio.run(scenario()))) == 1
    assert len(builds) == 1


def test_real_pip_without_an_index_fails_twice_promptly(cache, monkeypatch):
    """The real pip against an unreachable index, as on a compute node without network."""
    for variable in [v for v in list(os.environ) if v.startswith("PIP_")]:
        monkeypatch.delenv(variable)
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")

    async def scenario():
        for _ in range(2):
            with pytest.raises(InstanceError, match="No matching distribution found for ipykernel"):
                await asyncio.wait_for(supply.ensure_ipykernel((3, 11)), 30)

    asyncio.run(scenario())
    assert sorted(p.name for p in cache.iterdir()) == ["cp311.lock"]


def test_concurrent_probe_cache_updates_keep_every_entry(tmp_path, monkeypatch):
    """Kernel starts in several threads (and servers) add probe results at the same moment."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    writers, per_writer = 8, 20
    start = threading.Barrier(writers)

    def add_entries(writer: int) -> None:
        start.wait()
        for index in range(per_writer):
            probes.remember(f"{writer}-{index}", {"executable": "python", "version": [3, writer]})

    threads = [threading.Thread(target=add_entries, args=(writer,)) for writer in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cache = json.loads(probes.cache_path().read_text())
    assert set(cache) == {f"{w}-{i}" for w in range(writers) for i in range(per_writer)}
    assert cache["7-19"] == {"executable": "python", "version": [3, 7]}


def test_probe_cache_keeps_the_newest_entries(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(probes, "PROBE_CACHE_SIZE", 3)
    for key in ("a", "b", "c", "a", "d"):
        probes.remember(key, {"seen": key})
    assert list(json.loads(probes.cache_path().read_text())) == ["c", "a", "d"]


def test_configs_that_differ_in_anything_get_their_own_manager(tmp_path, monkeypatch):
    monkeypatch.setattr(InstanceManager, "_managers", {})
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("CNT_EXTRA_IMAGE_DIRS", str(tmp_path / "images"))
    monkeypatch.delenv("CNT_APPTAINER_BIN", raising=False)

    def manager(**traits) -> InstanceManager:
        return InstanceManager.for_config(CondaTainerConfig(**traits))

    default = manager()
    assert manager() is default  # equal configs share one
    variants = [
        manager(apptainer_bin="/opt/apptainer-1.3/bin/apptainer"),
        manager(image_dirs=[str(tmp_path / "other-images")]),
        manager(state_dir=str(tmp_path / "other-state")),
        manager(distro="ubuntu22"),
        manager(extra_binds=["/data"]),
        manager(container_env={"MAMBA_CHANNEL_ALIAS": "file:///mirror"}),
    ]
    assert len({id(m) for m in [default, *variants]}) == 1 + len(variants)
    assert variants[0].config.apptainer_bin == "/opt/apptainer-1.3/bin/apptainer"


GRACE = 1.5  # seconds each of SIGINT and SIGTERM get here before the next signal

# A cell running run_streaming in an interpreter of its own, as in a kernel: the test process's
# own state (a SIGINT ignored by a background start, children earlier tests left) must not count.
INTERRUPTED_CELL = f"""
import json, os, signal, sys, threading, time
from kernel_provider.incontainer import magic, proctree
signal.signal(signal.SIGINT, signal.default_int_handler)  # as ipykernel has it, even under nohup
magic.STOP_STEPS = ((signal.SIGINT, {GRACE}), (signal.SIGTERM, {GRACE}), (signal.SIGKILL, 5.0))
interrupted_at = []
def interrupt():
    interrupted_at.append(time.monotonic())
    os.kill(os.getpid(), signal.SIGINT)
threading.Timer(1.0, interrupt).start()
try:
    magic.run_streaming(["sh", "-c", sys.argv[1]])
    ended = None
except magic.CommandInterrupted as interrupted:
    ended = interrupted.ended
print(json.dumps({{"ended": ended, "took": time.monotonic() - interrupted_at[0],
                  "left": proctree.descendants(os.getpid())}}))
"""


@pytest.mark.parametrize(
    "script, stopped_by",
    [
        ("echo $$; sleep 60; true", signal.SIGINT),
        # sh runs a background job with SIGINT ignored: SIGINT ends sh, SIGTERM the orphaned sleep.
        ("sleep 60 & echo $!; wait", signal.SIGTERM),
        ("trap '' INT TERM; sleep 60 & echo $!; wait", signal.SIGKILL),
    ],
)
def test_an_interrupted_command_is_stopped_with_all_it_started(script, stopped_by):
    """A real SIGINT interrupts run_streaming; it signals the command's tree until none of it is left."""
    package_root = {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cell = subprocess.run(
        python_argv(INTERRUPTED_CELL, script),
        env={**os.environ, **package_root},
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = cell.stdout.splitlines()
    assert cell.returncode == 0 and lines, cell.stderr
    started, result = int(lines[0]), json.loads(lines[-1])
    assert result["ended"] is True, cell.stdout
    assert not proctree.is_running(started)
    assert result["left"] == []
    signal_times = {signal.SIGINT: 0, signal.SIGTERM: GRACE, signal.SIGKILL: 2 * GRACE}
    assert signal_times[stopped_by] <= result["took"] < signal_times[stopped_by] + GRACE
