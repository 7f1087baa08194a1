"""``%condatainer`` in real kernels in real instances, driven with jupyter_client."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from conftest import (
    DEBUGFS,
    RUNTIMES_AND_OCI,
    QuietReport,
    Server,
    connect,
    free_port,
    poll,
    processes_mentioning,
    reply_to,
    run_cell,
    running_instances,
    wait_until,
)
from jupyter_client.manager import AsyncKernelManager

from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.host.state import StateStore
from kernel_provider.kernel.kernelspecs import KernelspecStore, custom_spec

pytestmark = pytest.mark.integration


class Kernel:
    """A started kernel with helpers that return a cell's output or its error."""

    def __init__(self, name: str):
        self.km = AsyncKernelManager(kernel_name=name)

    async def __aenter__(self):
        await self.km.start_kernel()
        self.client = self.km.client()
        self.client.start_channels()
        await self.client.wait_for_ready(timeout=120)
        return self

    async def __aexit__(self, *exc):
        self.client.stop_channels()
        await self.km.shutdown_kernel()

    async def run(self, code: str, timeout: float = 180) -> tuple[str, dict | None]:
        """(stdout text, error content or None)."""
        return await run_cell(self.client, code, timeout)

    async def restart(self):
        await self.km.restart_kernel()
        await self.client.wait_for_ready(timeout=120)


def test_info_and_help_in_a_read_only_kernel(kernel_env):
    async def scenario():
        async with Kernel("condatainer-python-3.11") as kernel:
            info, error = await kernel.run("%condatainer info")
            assert error is None, error
            helptext, _ = await kernel.run("%condatainer help")
            doc, _ = await kernel.run("print(get_ipython().find_line_magic('condatainer').__doc__)")
            _, install_error = await kernel.run("%condatainer install zlib")
            overlays, _ = await kernel.run("%condatainer overlays")
            return info, helptext, doc, install_error, overlays

    info, helptext, doc, install_error, overlays = asyncio.run(scenario())
    apptainer_version = subprocess.run(["apptainer", "--version"], capture_output=True, text=True).stdout.strip()
    assert "python/3.11" in info and "Python 3.11 with ipykernel" in info
    assert apptainer_version in info
    assert "writable env: none" in info
    assert "%condatainer install numpy" in helptext and "%condatainer install numpy" in doc
    assert install_error["ename"] == "CondaTainerError"
    assert "no writable CondaTainer env" in "\n".join(install_error["traceback"])
    assert "hello/1.0" in overlays and "kernelspecs add" in overlays


def test_info_of_a_writable_env_kernel(kernel_env):
    KernelspecStore().write(custom_spec(["python/3.11", "hello/1.0", "env"], label="envk", writable=True, share=True))

    async def scenario():
        async with Kernel("condatainer-envk") as kernel:
            return await kernel.run("%condatainer info")

    info, error = asyncio.run(scenario())
    assert error is None
    assert "(shared)" in info
    assert "root of the hello tool" in info
    assert f"writable env: {kernel_env / 'images' / 'env.img'} at /ext3/env" in info


@pytest.fixture
def env_kernel(kernel_env, channel_env):
    """A writable env made with the local channel, and a kernelspec for it."""
    from kernel_provider.envs.operations import EnvOperations
    from kernel_provider.host.instances import InstanceManager

    config = CondaTainerConfig()
    asyncio.run(
        EnvOperations(config, InstanceManager(config)).create(QuietReport(), "menv", size_mb=256, packages=["zlib"])
    )
    spec = custom_spec(["python/3.11", "menv"], label="menv", writable=True, share=True)
    KernelspecStore().write(spec)
    return spec.name


@pytest.mark.parametrize("container_runtime", RUNTIMES_AND_OCI, indirect=True)
def test_install_import_list_remove_and_persist(request, container_runtime, env_kernel, kernel_env):
    container_runtime_is_oci = request.node.callspec.params["container_runtime"].endswith("-oci")

    async def scenario():
        async with Kernel(env_kernel) as kernel:
            # The fork server is the default; OCI mode has no instance to fork in.
            assert kernel.km.provisioner.forked != container_runtime_is_oci
            _, before = await kernel.run("import demopkg")
            installed, error = await kernel.run("%condatainer install demopkg")
            assert error is None, error
            imported, error = await kernel.run("import demopkg; print(demopkg.__version__)")
            assert error is None, error
            listing, _ = await kernel.run("%condatainer list demo")
            removed, error = await kernel.run("%condatainer remove demopkg")
            assert error is None, error
            await kernel.restart()
            _, after_restart = await kernel.run("import demopkg")
            reinstalled, error = await kernel.run("%condatainer install libdemo=1.0")
            assert error is None, error
            return before, imported, listing, after_restart

    before, imported, listing, after_restart = asyncio.run(scenario())
    assert before["ename"] == "ModuleNotFoundError"
    assert imported.strip() == "0.1"
    assert "demopkg" in listing and "0.1" in listing
    assert after_restart["ename"] == "ModuleNotFoundError"
    # The kernel is gone; what it installed is in the .img.
    listing = subprocess.run(
        [DEBUGFS, "-R", "ls upper/ext3/env/share/libdemo", str(kernel_env / "images" / "menv.img")],
        capture_output=True,
        text=True,
    ).stdout
    assert "VERSION" in listing


def test_unknown_package_is_a_cell_error_and_the_env_is_unchanged(env_kernel, kernel_env):
    async def scenario():
        async with Kernel(env_kernel) as kernel:
            before, _ = await kernel.run("%condatainer list")
            _, error = await kernel.run("%condatainer install no-such-package")
            after, _ = await kernel.run("%condatainer list")
            return before, error, after

    before, error, after = asyncio.run(scenario())
    assert error["ename"] == "CondaTainerError"
    # One line that says what happened (the tool's lines are in the cell's output), no magic frames.
    assert error["traceback"] == [
        "CondaTainerError: The package no-such-package is not in the channels. Check its name, or add the "
        "channel that has it; nothing was changed"
    ]
    assert before == after


def test_magic_waits_for_a_server_operation_on_the_same_env(env_kernel, kernel_env):
    """The magic and the REST API take one lock per env: never two changes at once."""
    from kernel_provider.envs.operations import EnvOperations

    lock = EnvOperations(CondaTainerConfig()).env_lock(str(kernel_env / "images" / "menv.img"))

    async def scenario():
        async with Kernel(env_kernel) as kernel:
            lock.acquire()
            try:
                msg_id = kernel.client.execute("%condatainer install libdemo=2.0")
                waiting = ""
                while "waiting for another operation" not in waiting:
                    message = await kernel.client.get_iopub_msg(timeout=60)
                    waiting += message["content"].get("text", "")
                await asyncio.sleep(1)  # still waiting while the lock is held
            finally:
                lock.release()
            reply = await reply_to(kernel.client, msg_id)
            version, _ = await kernel.run("print(open('/ext3/env/share/libdemo/VERSION').read().strip())")
            return reply["content"]["status"], version.strip()

    status, version = asyncio.run(scenario())
    assert (status, version) == ("ok", "2.0")


class HangingChannel:
    """A channel URL whose server gives the test channel's index (so the solver, and the dry run an
    install starts with, can plan) but takes package downloads and never answers them: a download
    that hangs until :meth:`hang_up` closes them (and stops listening), when it fails.
    ``connected`` is set once a download has started."""

    def __init__(self, index: Path):
        self.index = index  # SUBDIR/repodata.json of the packages it offers
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/hanging"
        self.connected, self._closing, self._held = threading.Event(), threading.Event(), []
        self._thread = threading.Thread(target=self._accept)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                connection = self.server.accept()[0]
            except TimeoutError:
                continue
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        """One request: ``SUBDIR/repodata.json`` answered, a package held, anything else 404."""
        request = b""
        connection.settimeout(10)
        try:
            while b"\r\n\r\n" not in request:
                chunk = connection.recv(4096)
                if not chunk:
                    raise OSError("closed before a whole request")
                request += chunk
        except OSError:
            connection.close()
            return
        method, path = request.decode("latin-1").split(" ")[:2]
        if path.endswith((".conda", ".tar.bz2")):
            self._held.append(connection)
            self.connected.set()
            return
        subdir, _, file = path.rpartition("/")
        index = self.index / os.path.basename(subdir) / "repodata.json"
        if file == "repodata.json" and index.is_file():
            body = index.read_bytes()
            head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        else:
            body, head = b"", "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n"
        with connection:
            connection.sendall(f"{head}Connection: close\r\n\r\n".encode() + (body if method == "GET" else b""))

    def hang_up(self) -> None:
        self._closing.set()
        self._thread.join()
        for connection in [self.server, *self._held]:
            connection.close()


@pytest.fixture
def hanging_channel(conda_channel):
    """A :class:`HangingChannel` offering the test channel's packages, hung up at the end of the test."""
    channel = HangingChannel(conda_channel.root / "conda-forge")
    yield channel
    if not channel._closing.is_set():
        channel.hang_up()


def test_interrupting_an_install_stops_mm_and_frees_the_env_lock(env_kernel, kernel_env, hanging_channel):
    """An interrupt of the cell stops mm-install before the lock is released; the env stays usable."""
    from kernel_provider.envs.operations import EnvOperations

    url, connected = hanging_channel.url, hanging_channel.connected
    lock = EnvOperations(CondaTainerConfig()).env_lock(str(kernel_env / "images" / "menv.img"))

    async def scenario():
        async with Kernel(env_kernel) as kernel:
            msg_id = kernel.client.execute(f"%condatainer install demopkg -c {url}")
            assert await asyncio.to_thread(connected.wait, 120), "mm-install never started a download from the channel"
            await kernel.km.interrupt_kernel()
            reply = await reply_to(kernel.client, msg_id)
            left_running = processes_mentioning(url)
            lock.acquire()  # free: raises EnvBusyError otherwise
            lock.release()
            _, error = await kernel.run("%condatainer install demopkg")
            imported, _ = await kernel.run("import demopkg; print(demopkg.__version__)")
            return reply["content"], left_running, error, imported

    interrupted, left_running, error, imported = asyncio.run(scenario())
    assert left_running == []
    assert interrupted["status"] == "error" and interrupted["ename"] == "CondaTainerError"
    assert "was interrupted and mm-install was stopped" in interrupted["evalue"]
    assert error is None, error
    assert imported.strip() == "0.1"


def test_an_orphaned_kernel_is_stopped_only_after_its_env_change_ends(env_kernel, kernel_env, hanging_channel):
    """A server SIGKILLed while a notebook installs into its env: the next server's sweep leaves
    that kernel's container running until the install has ended, then stops it (killing it
    midway would leave the env half-changed)."""
    server = Server(kernel_env, free_port())
    try:
        server.start()
        kernel = server.request("POST", "/api/kernels", {"name": env_kernel})
        client = connect(kernel_env, kernel["id"])
        client.execute(f"%condatainer install demopkg -c {hanging_channel.url}")
        assert hanging_channel.connected.wait(120), "mm-install never started a download from the channel"
        client.stop_channels()
        (instance,) = [r.name for r in StateStore(CondaTainerConfig().instance_state_dir).ours()]
        server.kill()
        server.start()  # its sweep finds the orphan with its env lock held
        assert not poll(lambda: instance not in running_instances(), timeout=5), "stopped mid-install"
        assert processes_mentioning(hanging_channel.url), "the install must still run"
        hanging_channel.hang_up()  # the download fails, mm-install ends, the lock is free
        wait_until(lambda: instance not in running_instances(), 120, "the orphan to stop after its install")
        assert not processes_mentioning(hanging_channel.url)
    finally:
        server.stop()
