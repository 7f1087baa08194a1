"""The two provisioner classes without Apptainer or SLURM: entry points, options, persistence,
the SLURM kernel's connection file, when a kernel listens, and what a fork server read."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest
import tomllib
from jupyter_client.manager import KernelManager

from kernel_provider.host.runtime import runtime_dir
from kernel_provider.host.zygote import READ_AHEAD_KEEP, Zygote
from kernel_provider.incontainer import zygote as zygote_module
from kernel_provider.incontainer.zygote import files_read
from kernel_provider.kernel.kernelspecs import custom_spec
from kernel_provider.kernel.provisioner import CHANNELS, CondaTainerProvisioner, channels_listening, listening_ports
from kernel_provider.kernel.provisioner_base import CondaTainerProvisionerBase, Placement
from kernel_provider.kernel.slurm_provisioner import CondaTainerSlurmProvisioner

PROVISIONERS = {
    "condatainer-provisioner": CondaTainerProvisioner,
    "condatainer-slurm-provisioner": CondaTainerSlurmProvisioner,
}
SHARED_OPTIONS = {"overlays", "base_image", "writable", "binds", "env", "apptainer_flags", "cull_idle_timeout"}


def test_one_entry_point_per_launcher_and_kernelspecs_name_them():
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    declared = pyproject["project"]["entry-points"]["jupyter_client.kernel_provisioners"]
    loaded = {}
    for name, target in declared.items():
        module, attribute = target.split(":")
        loaded[name] = getattr(importlib.import_module(module), attribute)
    assert loaded == PROVISIONERS
    for slurm, name in [(False, "condatainer-provisioner"), (True, "condatainer-slurm-provisioner")]:
        spec = custom_spec(["python/3.11"], slurm=slurm).to_kernel_json()
        assert spec["metadata"]["kernel_provisioner"]["provisioner_name"] == name


def test_each_provisioner_has_its_launchers_options_and_every_option_says_what_it_does():
    local = set(CondaTainerProvisioner.class_trait_names(config=True))
    slurm = set(CondaTainerSlurmProvisioner.class_trait_names(config=True))
    assert local == SHARED_OPTIONS | {"share_instance", "transport", "oci", "fork_server", "warm_timeout", "warm_limit"}
    slurm_own = {
        "slurm_args",
        "slurm_connect_ip",
        "slurm_launch_timeout",
        "slurm_walltime_poll",
        "slurm_walltime_warnings",
    }
    assert slurm == SHARED_OPTIONS | slurm_own
    for cls in PROVISIONERS.values():
        assert all(trait.help for trait in cls.class_traits(config=True).values())


@pytest.mark.parametrize("name", PROVISIONERS)
def test_provisioner_info_round_trip(name):
    """What get_provisioner_info saves, load_provisioner_info restores (into a new provisioner)."""
    cls = PROVISIONERS[name]
    saved = cls(kernel_id="0123456789abcdef", kernel_spec=None, parent=None)
    saved.connection_info = {"transport": "tcp", "ip": "10.0.0.7", "shell_port": 40001}
    saved.placement = Placement(instance="jcts-01234567-ab12", slurm_job="42")

    async def round_trip() -> tuple[dict, dict, CondaTainerProvisionerBase]:
        info = await saved.get_provisioner_info()
        loaded = cls(kernel_id=None, kernel_spec=None, parent=None)
        await loaded.load_provisioner_info(json.loads(json.dumps(info)))
        return info, await loaded.get_provisioner_info(), loaded

    info, again, loaded = asyncio.run(round_trip())
    assert info["placement"] == {"instance": "jcts-01234567-ab12", "slurm_job": "42"}
    assert again == info
    assert (loaded.kernel_id, loaded.placement) == (saved.kernel_id, saved.placement)


def test_slurm_connection_file_asks_for_ports_is_kept_by_a_restart_and_removed_at_shutdown(tmp_path):
    """Ports 0 on a first start (the kernel picks them on its node); the provisioner wrote the
    file, so it removes it: jupyter_client removes only the files it wrote itself."""
    km = KernelManager(connection_file=str(tmp_path / "kernel-k.json"))
    provisioner = CondaTainerSlurmProvisioner(kernel_id="k", kernel_spec=None, parent=km)
    path = Path(km.connection_file)

    provisioner._prepare_connection_file("10.0.0.7")
    written = json.loads(path.read_text())
    assert [written[key] for key in ("ip", "transport", "shell_port", "hb_port")] == ["10.0.0.7", "tcp", 0, 0]
    assert path.stat().st_mode & 0o777 == 0o600
    bound = {"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "hb_port": 4, "control_port": 5}
    km.load_connection_info({**written, **bound})  # what the kernel wrote back

    provisioner._prepare_connection_file("10.0.0.7")  # a restart on the same node keeps the file
    assert json.loads(path.read_text()) == written
    asyncio.run(provisioner.cleanup(restart=True))
    assert path.exists()
    km.cleanup_connection_file()
    assert path.exists(), "not jupyter_client's to remove"
    asyncio.run(provisioner.cleanup(restart=False))
    assert not path.exists()


def test_channels_listening_needs_every_channel_bound(tmp_path):
    """ipc: each channel's socket file; tcp: each port in LISTEN state (real sockets)."""
    ipc = {"transport": "ipc", "ip": str(tmp_path / "k"), **{name: i + 1 for i, name in enumerate(CHANNELS)}}
    for port in range(1, 5):
        (tmp_path / f"k-{port}").touch()
    assert not channels_listening(ipc)
    (tmp_path / "k-5").touch()
    assert channels_listening(ipc)

    sockets = [socket.create_server(("127.0.0.1", 0)) for _ in CHANNELS]
    try:
        tcp = {"transport": "tcp", "ip": "127.0.0.1"}
        tcp.update({name: s.getsockname()[1] for name, s in zip(CHANNELS, sockets)})
        assert tcp["shell_port"] in listening_ports()
        assert channels_listening(tcp)
        sockets.pop().close()
        assert not channels_listening(tcp)
    finally:
        for s in sockets:
            s.close()


def test_files_read_lists_the_interpreter_and_each_modules_bytecode_in_order():
    """What the fork server leaves for the next start to read ahead: regular files only, each once,
    the mapped interpreter before the modules, a module's bytecode when it has some."""
    files = files_read()
    assert len(files) == len(set(files)) and all(os.path.isabs(f) and os.path.isfile(f) for f in files)
    assert os.path.realpath(sys.executable) in files
    spec = zygote_module.__spec__
    mine = spec.cached if spec.cached and os.path.isfile(spec.cached) else spec.origin
    assert files.index(os.path.realpath(sys.executable)) < files.index(mine)


def test_read_ahead_lists_of_stacks_unused_for_a_month_are_swept(tmp_path, monkeypatch):
    """An instance's start script touches its stack's list; the sweep removes lists untouched for
    READ_AHEAD_KEEP and nothing else."""
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))
    directory = runtime_dir()
    used = Zygote.read_ahead_list("/usr/bin/python3", ["/images/a.sif"])
    unused = Zygote.read_ahead_list("/usr/bin/python3", ["/images/b.sif"])
    other = directory / "kernel-x.env"
    for path in (used, unused, other):
        path.write_text("/usr/bin/python3\n")
        os.utime(path, (0, time.time() - READ_AHEAD_KEEP - 60))
    script = Zygote.write_start_script("jct-test", "/usr/bin/python3", used)
    assert f"xargs cat < {used}" in script.read_text()
    Zygote.sweep_read_ahead_lists(directory)
    assert used.exists() and not unused.exists() and other.exists()
