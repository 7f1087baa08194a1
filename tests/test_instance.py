"""A real instance of the full stack: base image + python + tool overlay + writable env; and the
refusals before any instance starts (those need only the images' names)."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from conftest import DEBUGFS, acquired, exec_in, make_plan, running_instances

from kernel_provider.host.config import ApptainerNotFoundError, CondaTainerConfig
from kernel_provider.host.instances import InstanceManager
from kernel_provider.model.overlays import OverlayError, OverlayNotFoundError
from kernel_provider.model.plan import BaseImageNotFoundError

PROBE = (
    "import json, os, sys; open('/ext3/env/written-by-test', 'w').write('ok'); "
    "print(json.dumps({'exe': sys.executable, 'env': dict(os.environ)}))"
)


@pytest.mark.integration
def test_full_stack_in_a_real_instance(user_layout):
    plan = make_plan("python/3.11", "hello/1.0", "env", writable=True)
    manager = InstanceManager(CondaTainerConfig())

    async def scenario():
        async with acquired(manager, plan) as instance:
            assert instance.name in running_instances()
            state = json.loads(manager.store.path(instance.name).read_text())
            assert state["overlays"] == plan.overlay_args and state["base_image"] == plan.base_image.path
            result = await exec_in(manager, instance, ["python", "-c", PROBE])
            assert result.returncode == 0, result.stderr
            return instance.name, json.loads(result.stdout.splitlines()[-1])

    name, seen = asyncio.run(scenario())
    env = seen["env"]
    assert seen["exe"] == "/cnt/python/3.11/bin/python"
    assert env["PATH"].startswith("/ext3/env/bin:/cnt/hello/1.0/bin:/cnt/python/3.11/bin:")
    assert "/root/.pyenv" not in env["PATH"], "host PATH leaked into the container"
    assert env["HELLO_HOME"] == "/cnt/hello/1.0"
    assert env["HELLO_GREETING"] == "hi from /cnt/hello/1.0"  # $VAR expanded inside, like CondaTainer
    assert env["IN_CONDATAINER"] == "1" and env["LC_ALL"] == "C.UTF-8" and env["LANG"] == "C.UTF-8"
    assert env["CONDA_PREFIX"] == env["CNT_CONDA_PREFIX"] == "/ext3/env"
    # The write went into the .img: it is there after the instance is gone.
    assert name not in running_instances()
    assert not manager.store.path(name).exists()
    listing = os.popen(f"{DEBUGFS} -R 'ls -l /upper/ext3/env' {user_layout}/images/env.img 2>/dev/null").read()
    assert "written-by-test" in listing


@pytest.mark.integration
def test_tool_overlay_bin_is_on_path(user_layout):
    plan = make_plan("hello/1.0", "python/3.11")
    manager = InstanceManager(CondaTainerConfig())

    async def scenario():
        async with acquired(manager, plan) as instance:
            return await exec_in(manager, instance, ["hello"])

    result = asyncio.run(scenario())
    assert result.returncode == 0, result.stderr
    assert "hello from condatainer" in result.stdout


@pytest.mark.integration
def test_shared_instance_serves_two_kernels_and_stops_with_the_last(user_layout):
    plan = make_plan("python/3.11")
    manager = InstanceManager(CondaTainerConfig())

    async def scenario():
        first = await manager.acquire(plan, "a", share=True)
        second = await manager.acquire(plan, "b", share=True)
        assert first is second
        await manager.release(first, "a")
        still = first.name in running_instances()
        await manager.release(second, "b")
        return first.name, still

    name, still_running_after_first = asyncio.run(scenario())
    assert still_running_after_first
    assert name not in running_instances()


def test_unknown_overlay_names_close_matches(placeholder_layout):
    with pytest.raises(OverlayNotFoundError, match="Did you mean: python/3.11"):
        make_plan("python/3.12")


def test_two_writable_images_are_refused(placeholder_layout):
    (placeholder_layout / "images" / "other.img").write_bytes(b"")
    with pytest.raises(OverlayError, match="only one .img"):
        make_plan("env", "other")


def test_missing_base_image_says_what_to_do(placeholder_layout):
    (placeholder_layout / "images" / "ubuntu24--base_image.sif").unlink()
    with pytest.raises(BaseImageNotFoundError, match="build-images"):
        make_plan("python/3.11", config=CondaTainerConfig(image_dirs=[str(placeholder_layout / "images")]))


def test_no_apptainer_is_a_clear_error(placeholder_layout):
    manager = InstanceManager(CondaTainerConfig(apptainer_bin="/nonexistent/apptainer"))
    with pytest.raises(ApptainerNotFoundError, match="Apptainer not found"):
        asyncio.run(manager.acquire(make_plan("python/3.11"), "k", share=False))
