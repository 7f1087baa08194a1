"""``%condatainer`` in real kernels in real instances, driven with jupyter_client."""

from __future__ import annotations

import asyncio
import subprocess

import pytest
from jupyter_client.manager import AsyncKernelManager

from kernel_provider.config import CondaTainerConfig
from kernel_provider.kernelspecs import KernelspecStore, custom_spec
from kernel_provider.overlays import scan

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
        out, error = [], None

        def hook(msg):
            nonlocal error
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                error = msg["content"]

        await self.client.execute_interactive(code, output_hook=hook, timeout=timeout)
        return "".join(out), error

    async def restart(self):
        await self.km.restart_kernel()
        await self.client.wait_for_ready(timeout=120)


@pytest.fixture
def specs(user_layout):
    config = CondaTainerConfig()
    KernelspecStore().sync(scan(config.image_dirs, config.distro))
    return user_layout


def test_info_and_help_in_a_read_only_kernel(specs):
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


def test_info_of_a_writable_env_kernel(specs):
    KernelspecStore().write(custom_spec(["python/3.11", "hello/1.0", "env"], label="envk", writable=True, share=True))

    async def scenario():
        async with Kernel("condatainer-envk") as kernel:
            return await kernel.run("%condatainer info")

    info, error = asyncio.run(scenario())
    assert error is None
    assert "(shared)" in info
    assert "root of the hello tool" in info
    assert f"writable env: {specs / 'images' / 'env.img'} at /ext3/env" in info
