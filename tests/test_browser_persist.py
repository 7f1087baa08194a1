"""``persist_kernels`` through JupyterLab: an open notebook outlives a SIGKILLed server.

A notebook in Chromium runs ``x = 42`` in a CondaTainer kernel; ``jupyter lab`` is killed
with SIGKILL and started again on the same port. Without reloading the page, JupyterLab
reconnects to the same kernel id and ``print(x)`` prints 42. Then a kernel is culled for
idleness, and JupyterLab shows our notification saying so. Uses ``test_browser.py``'s
``jupyter lab`` and Chromium fixtures.
"""

from __future__ import annotations

import json
import signal
import urllib.request

import pytest
from conftest import set_server_config, wait_until
from test_browser import KERNEL_LABEL, KERNEL_TIMEOUT_MS, browser_page, lab  # noqa: F401 - fixtures

from kernel_provider.kernel.kernelspecs import KernelspecStore, custom_spec

KERNEL = "condatainer-python-3.11"
pytestmark = [pytest.mark.integration, pytest.mark.browser]


@pytest.fixture
def persisting(user_layout):
    """Server config for ``lab``: our kernel manager keeping kernels, sessions on disk."""
    config = {
        "ServerApp": {"kernel_manager_class": "kernel_provider.server.kernelmanager.CondaTainerKernelManager"},
        "CondaTainerKernelManager": {"persist_kernels": True},
        # The culler on (a kernelspec below gets a short timeout of its own); 1 s between looks.
        "MappingKernelManager": {"cull_idle_timeout": 3600, "cull_interval": 1},
        "SessionManager": {"database_filepath": str(user_layout / "sessions.db")},
    }
    set_server_config(user_layout, config)
    KernelspecStore().write(custom_spec(["python/3.11"], label="soon-idle", extra_config={"cull_idle_timeout": 2}))
    return user_layout


def delete(lab, path: str) -> None:  # noqa: F811 - lab is the fixture's value here
    request = urllib.request.Request(lab.url + path, method="DELETE", headers={"Authorization": f"token {lab.token}"})
    urllib.request.urlopen(request, timeout=60).close()


def click_past_dialogs(page, target, attempts: int = 6) -> None:
    """Click ``target``, first dismissing the dialogs JupyterLab opens over it."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    for _ in range(attempts):
        for dialog in page.locator(".jp-Dialog").all():
            dialog.get_by_role("button").last.click()
        try:
            target.click(timeout=5000)
            return
        except PlaywrightTimeoutError:
            continue
    raise AssertionError(f"could not click {target} past JupyterLab's dialogs")


def test_an_open_notebook_keeps_its_kernel_across_a_killed_server(persisting, lab, browser_page):  # noqa: F811
    from playwright.sync_api import expect

    page = browser_page
    notebook_json = {
        "cells": [],
        "metadata": {"kernelspec": {"name": KERNEL, "display_name": KERNEL_LABEL, "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    (lab.root / "persist.ipynb").write_text(json.dumps(notebook_json))
    try:
        page.goto(f"{lab.url}/lab/tree/persist.ipynb?token={lab.token}")
        notebook = page.locator(".jp-NotebookPanel:visible")
        status = page.locator("#jp-main-statusbar").get_by_text(f"{KERNEL_LABEL} | Idle")
        expect(status).to_be_visible(timeout=KERNEL_TIMEOUT_MS)
        [kernel] = lab.get("/api/kernels")
        notebook.locator(".jp-Cell .cm-content").first.click()
        page.keyboard.type("x = 42; print(x)")
        page.keyboard.press("Shift+Enter")
        expect(notebook.locator(".jp-OutputArea-output").first).to_have_text("42", timeout=KERNEL_TIMEOUT_MS)

        lab.process.send_signal(signal.SIGKILL)
        lab.process.wait()
        lab.start()
        assert [k["id"] for k in lab.get("/api/kernels")] == [kernel["id"]], "adopted under the same id"
        # JupyterLab reconnects by itself (its websocket retries); what is typed meanwhile waits for it.
        # A poll that failed while no server ran may have opened "Server Connection Error": dismiss it.
        click_past_dialogs(page, notebook.locator(".jp-Cell .cm-content").last)
        page.keyboard.type("print(x)")
        page.keyboard.press("Shift+Enter")
        expect(notebook.locator(".jp-OutputArea-output").nth(1)).to_have_text("42", timeout=KERNEL_TIMEOUT_MS)

        # A kernel culled for idleness: JupyterLab is told so (our notification, from the event bus).
        lab.post("/api/kernels", {"name": "condatainer-soon-idle"})
        toast = page.locator(".Toastify__toast", has_text="without activity (idle culling)")
        expect(toast).to_be_visible(timeout=KERNEL_TIMEOUT_MS)
        assert page.errors == []
    finally:
        # With persist_kernels a stopped server leaves its kernels running: shut them down first.
        for running in lab.get("/api/kernels") or []:
            delete(lab, f"/api/kernels/{running['id']}")
        wait_until(lambda: lab.get("/api/kernels") == [], 30, "the kernels to shut down")
