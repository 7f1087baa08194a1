"""SingularityCE: runtime detection of each binary, and OCI mode (``exec --oci``) for real.

Native SingularityCE runs the strongest Apptainer tests again (``container_runtime`` in
conftest: the kernel lifecycle, the orphan sweep, env create and the magic's install). Here:
what only SingularityCE has — OCI mode, where there are no instances, the kernel is PID 1 of
its own container and the container has its own network namespace.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    KERNEL,
    QuietReport,
    Server,
    free_port,
    processes_mentioning,
    reply_to,
    run_cell,
    singularityce_bin,
    wait_until,
)
from jupyter_client.manager import AsyncKernelManager

from kernel_provider.envs.envmeta import read_env_meta
from kernel_provider.envs.operations import EnvOperations, read_conda_meta
from kernel_provider.host import process, runtime_detect
from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.host.instances import InstanceManager
from kernel_provider.host.process import apptainer_env
from kernel_provider.host.state import StateStore
from kernel_provider.kernel.kernelspecs import KernelspecStore, custom_spec
from kernel_provider.kernel.provisioner_base import KernelStartError
from kernel_provider.model import command
from kernel_provider.model.flavour import APPTAINER, SINGULARITYCE
from kernel_provider.model.overlays import Overlay

pytestmark = [pytest.mark.integration, pytest.mark.singularityce]


@pytest.fixture
def singularityce(monkeypatch) -> str:
    """SingularityCE as the runtime, chosen as CondaTainer reads it."""
    binary = singularityce_bin()
    monkeypatch.setenv("CNT_APPTAINER_BIN", binary)
    return binary


@pytest.fixture
def oci_kernel(singularityce, kernel_env) -> str:
    """A kernelspec for python/3.11 in OCI mode (the provisioner's ``oci`` option)."""
    spec = custom_spec(["python/3.11"], label="oci", extra_config={"oci": True})
    KernelspecStore().write(spec)
    return spec.name


@pytest.fixture
def jp_server_config(placeholder_layout):
    return {"ServerApp": {"jpserver_extensions": {"kernel_provider": True}}}


@pytest.mark.parametrize("which", ["apptainer", "singularity"])
def test_runtime_detection_of_each_binary(which, monkeypatch):
    """Each binary says what it is (flavour, version, default mode) and gets its own variables;
    ``jupyter condatainer info`` shows it."""
    binary = singularityce_bin() if which == "singularity" else shutil.which("apptainer")
    monkeypatch.setenv("CNT_APPTAINER_BIN", binary)
    runtime = asyncio.run(runtime_detect.detect(binary))
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    assert runtime.version and runtime.version in version
    flavour, other = (SINGULARITYCE, APPTAINER) if which == "singularity" else (APPTAINER, SINGULARITYCE)
    assert runtime.flavour == flavour and runtime_detect.flavour_for(binary) == flavour
    assert runtime.oci_by_default is False  # the shipped singularity.conf: oci mode = no
    monkeypatch.setenv("SINGULARITY_OCI", "true")  # SingularityCE's own --oci for every command
    assert asyncio.run(runtime_detect.detect(binary)).oci_mode() is (which == "singularity")
    monkeypatch.delenv("SINGULARITY_OCI")
    env = apptainer_env(binary)
    if command.needs_drop_caps(os.getuid(), process._cap_bounding_set()):
        assert env[flavour.drop_caps_variable] == "CAP_SYS_RESOURCE"
    assert other.drop_caps_variable not in env or other.drop_caps_variable in os.environ
    cli = [sys.executable, "-m", "kernel_provider.cli.main", "info", "--json"]
    shown = json.loads(subprocess.run(cli, capture_output=True, text=True, check=True).stdout)
    assert shown == {**runtime.as_dict(), "mode": "native", "instances": True}


async def test_the_rest_api_says_which_runtime_and_mode(singularityce, api):
    status, shown = await api("GET", "runtime")
    assert status == 200
    assert shown["runtime"] == "SingularityCE" and shown["binary"] == singularityce
    assert shown["mode"] == "native" and shown["instances"] is True


def test_oci_kernel_lifecycle(oci_kernel, kernel_env):
    """Execute as PID 1 of its own container, interrupt by message, restart, shut down (by
    message, then SIGKILL) leaving no process, record or mount."""

    async def scenario():
        km = AsyncKernelManager(kernel_name=oci_kernel)
        await km.start_kernel(cwd=str(kernel_env))
        client = km.client()
        client.start_channels()
        try:
            await client.wait_for_ready(timeout=60)
            out, _ = await run_cell(client, "import os, sys; print(os.getpid(), sys.executable, os.getcwd())")
            assert out.split() == ["1", "/cnt/python/3.11/bin/python", str(kernel_env)]
            name = km.provisioner.instance.name
            assert km.provisioner.instance.oci
            record = StateStore(CondaTainerConfig().instance_state_dir).read(name)
            assert record.oci and record.oci_process[0] == km.provisioner.process.pid
            assert json.loads(Path(km.connection_file).read_text())["transport"] == "ipc"

            msg_id = client.execute("import time; time.sleep(60)")
            await asyncio.sleep(1.0)
            await km.interrupt_kernel()
            reply = await reply_to(client, msg_id, timeout=10)
            assert reply["content"]["ename"] == "KeyboardInterrupt"

            first = km.provisioner.process.pid
            await km.restart_kernel()
            await client.wait_for_ready(timeout=60)
            assert km.provisioner.process.pid != first and km.provisioner.instance.name == name
            out, _ = await run_cell(client, "print(40 + 2)")
            assert out.strip() == "42"
            info, error = await run_cell(client, "%condatainer info")
            assert error is None and "(OCI mode, no instance)" in info and "singularity-ce version" in info
        finally:
            client.stop_channels()
            await km.shutdown_kernel(now=False)
        return name

    name = asyncio.run(scenario())
    assert not StateStore(CondaTainerConfig().instance_state_dir).path(name).exists()
    assert processes_mentioning(name) == [] and processes_mentioning("oci-bundle") == []
    assert list((kernel_env / "runtime" / "condatainer").glob("*.env")) == []


def test_oci_refuses_tcp_with_the_reason(singularityce, kernel_env):
    spec = custom_spec(["python/3.11"], label="ocitcp", extra_config={"oci": True, "transport": "tcp"})
    KernelspecStore().write(spec)

    async def scenario():
        km = AsyncKernelManager(kernel_name=spec.name)
        with pytest.raises(KernelStartError) as refused:
            await km.start_kernel()
        return str(refused.value)

    message = asyncio.run(scenario())
    assert "tcp transport cannot work in SingularityCE's OCI mode" in message
    assert "own network namespace" in message
    assert StateStore(CondaTainerConfig().instance_state_dir).ours() == []


def test_oci_env_install_on_a_copy(singularityce, kernel_env, channel_env, monkeypatch):
    """With OCI mode for every container, env create and install run as one-shot ``exec --oci``
    on a work copy renamed over the env only at the end."""
    argvs = []
    real = command.oneshot_exec_argv

    def recorded(*args, **kwargs):
        argvs.append(real(*args, **kwargs))
        return argvs[-1]

    monkeypatch.setattr(command, "oneshot_exec_argv", recorded)
    config = CondaTainerConfig(oci=True)
    operations = EnvOperations(config, InstanceManager(config))

    async def scenario():
        await operations.create(QuietReport(), "ocienv", size_mb=256, packages=["zlib"])
        return await operations.change(QuietReport(), "ocienv", "install", ["demopkg"])

    result = asyncio.run(scenario())
    assert result.startswith("install demopkg: done")
    assert argvs and all(argv[1:3] == ["exec", "--oci"] for argv in argvs)
    image = kernel_env / "images" / "ocienv.img"
    names = {p.name for p in read_conda_meta(read_env_meta(Overlay.from_path(str(image))))}
    assert {"zlib", "demopkg"} <= names
    assert sorted(p.name for p in image.parent.iterdir() if ".work" in p.name or p.name.startswith(".")) == []


def test_oci_orphans_are_swept_by_our_records(singularityce, kernel_env, monkeypatch):
    """A SIGKILLed server leaves its OCI kernels running (no instance list shows them); the next
    server ends them by their recorded process, leaving no container or mount. OCI mode comes
    from SingularityCE's own setting here (``SINGULARITY_OCI``), for a plain kernelspec."""
    monkeypatch.setenv("SINGULARITY_OCI", "true")
    server = Server(kernel_env, free_port())
    store = StateStore(CondaTainerConfig().instance_state_dir)
    try:
        server.start()
        server.request("POST", "/api/kernels", {"name": KERNEL})
        record = wait_until(lambda: next((r for r in store.ours() if r.oci_process), None), 60, "the OCI record")
        pid = record.oci_process[0]
        cli = [sys.executable, "-m", "kernel_provider.cli.main", "instances", "list", "--json"]
        listing = json.loads(subprocess.run(cli, capture_output=True, text=True, check=True).stdout)
        assert [row["running"] for row in listing if row["name"] == record.name] == [True]
        server.kill()
        time.sleep(0.5)
        assert os.path.exists(f"/proc/{pid}"), "the kernel's container outlives a SIGKILLed server"

        server.start()
        wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 30, "the orphan's exec --oci to end")
        wait_until(lambda: record.name not in {r.name for r in store.ours()}, 10, "the orphan's record to go")
        assert processes_mentioning(record.name) == []
    finally:
        server.stop()
