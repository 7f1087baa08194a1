"""Locks and process handling that concurrent kernel starts and interrupted cells rely on.

Unit tests: no Apptainer. Where a real tool is cheap (pip, ``sleep``), it runs for real.
"""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from kernel_provider import supply
from kernel_provider.instance import InstanceError

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
