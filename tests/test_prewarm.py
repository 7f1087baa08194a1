"""Stacks started warm with the server (:mod:`kernel_provider.kernel.prewarm`)."""

from __future__ import annotations

import pytest
from conftest import KERNEL, Server, free_port, running_instances, set_server_config, wait_until

from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.host.state import StateStore
from kernel_provider.kernel import prewarm
from kernel_provider.kernel.kernelspecs import KernelspecStore, custom_spec


def test_the_latest_kernels_are_remembered_latest_first_each_once(tmp_path):
    config = CondaTainerConfig(state_dir=str(tmp_path / "state"))
    assert prewarm.recent(config) == []
    for name in ["a", "b", "a", *(f"k{i}" for i in range(10))]:
        prewarm.note(config, name)
    assert prewarm.recent(config) == [f"k{i}" for i in range(9, 9 - prewarm.KEEP, -1)]
    (tmp_path / "state" / prewarm.RECENT_FILE).write_text("{not json")
    assert prewarm.recent(config) == []


def test_chosen_are_the_named_then_the_latest_each_once():
    assert prewarm.chosen(["x"], ["y", "x", "z"], 2) == ["x", "y"]
    assert prewarm.chosen([], ["y", "z"], 0) == []
    assert prewarm.chosen(["x", "x"], ["y"], 5) == ["x", "y"]


@pytest.mark.integration
def test_the_latest_stack_starts_warm_with_the_server_and_its_first_kernel_joins_it(kernel_env):
    """A server started after a kernel of python/3.11 ran starts that stack's instance warm, no
    kernel shown; the next kernel joins it; a writable env's kernelspec is never warmed; the
    server's exit stops the warm instance."""
    KernelspecStore().write(custom_spec(["python/3.11", "env"], label="env rw", writable=True))
    set_server_config(
        kernel_env, {"CondaTainerExtension": {"prewarm_recent": 1, "prewarm": ["condatainer-env-rw", "nonesuch"]}}
    )
    config = CondaTainerConfig()
    prewarm.note(config, KERNEL)
    store = StateStore(config.instance_state_dir)
    server = Server(kernel_env, free_port())
    try:
        server.start()
        warm = wait_until(lambda: [r.name for r in store.ours() if r.warm], 120, "the warm instance")
        assert len(warm) == 1 and warm[0] in running_instances()
        assert server.request("GET", "/api/kernels") == [], "the warming kernel is not one of the server's"
        kernel = server.request("POST", "/api/kernels", {"name": KERNEL})
        assert [(r.name, r.kernels) for r in store.ours()] == [(warm[0], [kernel["id"]])]
        log = "".join(path.read_text() for path in kernel_env.glob("server-*.log"))
        assert "started warm: condatainer-python-3.11" in log and "no kernelspec nonesuch" in log
        server.request("DELETE", f"/api/kernels/{kernel['id']}")
        server.stop()
        wait_until(lambda: warm[0] not in running_instances(), 60, "the exiting server's stop of its warm instance")
        assert store.ours() == []
    finally:
        server.stop()
