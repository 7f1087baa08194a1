"""The CondaTainer panel in a real browser, against a real ``jupyter lab`` on real Apptainer.

Debian's ``chromium`` (``scripts/setup-browser.sh``) is driven by Python ``playwright`` with
``executable_path``; Playwright's own browser downloads are never used. The server runs as a
subprocess in an isolated layout (``user_layout``: private Jupyter, image and state dirs) with
the extension as the editable install put it into the venv, and creates envs from the local
test channel (``tests/channel.py``): ``MAMBA_CHANNEL_ALIAS=file://ROOT`` in the server's
environment is passed into every container and its root bound
(``CondaTainerConfig.container_env``), so the channel names ``conda-forge``/``bioconda`` resolve
to it, as a site's local conda mirror would.

Screenshots go to ``$JCT_SCREENSHOTS`` (default ``artifacts/screenshots`` in the repo, which
CI keeps): ``01-panel``, ``02-create-progress``, ``03a-install-preview``, ``03-packages``,
``04-notebook``, ``04a-kernel-starts``, ``04b-kernel-logs``, ``04d-kernel-terminal``, ``04c-disk``,
``06-stack-differs``, ``05-dark``; ``07-stack-remedies``, ``07a-kernel-switched``,
``08-env-remedies``, ``08a-rollback-confirm``, ``08b-frozen-kernel``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import free_port, poll, running_instances

from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.host.state import StateStore

pytestmark = [pytest.mark.integration, pytest.mark.browser]

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
EXTENSION = "jupyter-condatainer"
KERNEL_LABEL = "CondaTainer: python/3.11"
UI_TIMEOUT_MS = 20_000  # a panel or dialog state after a click
JOB_TIMEOUT_MS = 150_000  # an env job (one-shot containers) from start to end
KERNEL_TIMEOUT_MS = 90_000  # instance start + first kernel reply (+ a supplied ipykernel once)
FINAL_STATES = ("succeeded", "failed", "cancelled")  # a job's end (data-state)
FINAL = re.compile(f"^({'|'.join(FINAL_STATES)})$")


def screenshot_dir(tmp_path: Path) -> Path:
    """``$JCT_SCREENSHOTS`` or ``artifacts/screenshots``; a private one when that is not writable."""
    wanted = Path(os.environ.get("JCT_SCREENSHOTS") or REPO / "artifacts" / "screenshots")
    try:
        wanted.mkdir(parents=True, exist_ok=True)
        if os.access(wanted, os.W_OK):
            return wanted
    except OSError:
        pass
    fallback = tmp_path / "screenshots"
    fallback.mkdir(exist_ok=True)
    print(f"{wanted} is not writable; screenshots go to {fallback}")
    return fallback


class Lab:
    """``jupyter lab`` as a subprocess with token auth, stopped with SIGTERM like a user's Ctrl-C."""

    def __init__(self, root: Path, log: Path, env: dict[str, str]):
        self.root, self.log_path, self.env = root, log, env
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> None:
        argv = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            f"--port={self.port}",
            "--ServerApp.ip=127.0.0.1",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
        ]
        if os.getuid() == 0:
            argv.append("--allow-root")
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.root, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"jupyter lab exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.get("/api/status")
                return
            except OSError:
                time.sleep(0.2)
        pytest.fail(f"jupyter lab did not answer within {timeout} s:\n{self.log_tail()}")

    def get(self, path: str):
        request = urllib.request.Request(self.url + path, headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(
            self.url + path,
            method="POST",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read() or b"null")

    def run_job(self, path: str, body: dict) -> dict:
        """POST a request that answers with a job and wait for its end; the job, which must have succeeded."""
        job_id = self.post(path, body)["job"]["id"]
        job = poll(lambda: (j := self.get(f"/condatainer/api/jobs/{job_id}"))["state"] in FINAL_STATES and j, 180)
        assert job and job["state"] == "succeeded", job
        return job

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> Lab:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # the server shuts its kernels (and instances) down
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def quiet_profile() -> None:
    """No "get notified about news?" toast (and no request to the news feed) in a fresh profile."""
    config_dir = Path(os.environ["JUPYTER_CONFIG_DIR"])
    settings = config_dir / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )


def this_checkouts_panel() -> None:
    """This checkout's panel build first in JUPYTER_PATH, before the one installed in the venv."""
    built = REPO / "kernel_provider" / "labextension"
    assert (built / "package.json").is_file(), f"{built} missing: run scripts/build-labextension.sh"
    extensions = Path(os.environ["JUPYTER_PATH"]) / "labextensions"
    extensions.mkdir(parents=True)
    (extensions / EXTENSION).symlink_to(built)


@pytest.fixture
def lab(user_layout, conda_channel):
    """A running ``jupyter lab`` in the isolated layout, the test channel wired in."""
    quiet_profile()
    root = user_layout / "notebooks"
    root.mkdir()
    env = {**os.environ, **conda_channel.env}  # a site conda mirror, as CondaTainerConfig.container_env reads it
    with Lab(root, user_layout / "lab.log", env) as server:
        yield server


@pytest.fixture
def browser_page(lab):
    """A Chromium page logged in to ``lab``; records uncaught page errors in ``page.errors``."""
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.fail("Python playwright is missing: pip install -e '.[test]' (scripts/setup.sh does)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup-browser.sh (scripts/setup.sh does)")
    expect.set_options(timeout=UI_TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            page = context.new_page()
            page.errors = []
            page.on("pageerror", lambda error: page.errors.append(str(error)))
            page.goto(f"{lab.url}/lab?reset&token={lab.token}")
            yield page
        finally:
            browser.close()


def assert_extension_enabled(env: dict[str, str]) -> None:
    """``jupyter labextension list`` shows ours enabled and OK, and it is the current build."""
    result = subprocess.run(
        [sys.executable, "-m", "jupyter", "labextension", "list"], capture_output=True, text=True, env=env, timeout=60
    )
    listing = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)
    assert re.search(rf"^\s*{EXTENSION} v\S+ enabled OK\b", listing, re.M), listing
    installed = Path(sys.prefix) / "share" / "jupyter" / "labextensions" / EXTENSION / "package.json"
    built = REPO / "kernel_provider" / "labextension" / "package.json"
    assert installed.is_file() and built.is_file(), f"{installed} / {built} missing: run scripts/setup.sh"
    assert (
        json.loads(installed.read_text())["jupyterlab"]["_build"]
        == json.loads(built.read_text())["jupyterlab"]["_build"]
    ), f"{installed.parent} is not the current build of labextension/: run scripts/setup.sh"


def test_panel_env_lifecycle_and_notebook(lab, browser_page, tmp_path):
    page = browser_page
    shots = screenshot_dir(tmp_path)
    assert_extension_enabled(lab.env)
    try:
        walk_through(page, shots, lab.root)
    except BaseException:
        page.screenshot(path=str(shots / "failure.png"))
        print(f"jupyter lab log:\n{lab.log_tail()}")
        raise
    assert page.errors == [], page.errors

    # Stopping the server stops the kernel and its instance; nothing of ours is left running.
    store = StateStore(CondaTainerConfig().instance_state_dir)
    ours = {record.name for record in store.ours()}
    assert ours, "the notebook's kernel has an instance"
    lab.stop()
    assert lab.process.returncode == 0, lab.log_tail()
    assert not ours & running_instances()
    assert store.ours() == []


def fill_create_dialog(dialog, name: str, packages: str, channels: str) -> None:
    """Type into the "New env" dialog as a user does: once it has put the cursor in the name field.
    It does so when its body has rendered, which can be after the fields exist: text typed into
    another field before that moment lands in the name ("demo" + "256" became "demo256")."""
    from playwright.sync_api import expect

    name_field = dialog.get_by_test_id("jp-condatainer-create-name")
    expect(name_field).to_be_focused()
    name_field.fill(name)
    dialog.get_by_test_id("jp-condatainer-create-size").fill("256")
    dialog.get_by_test_id("jp-condatainer-create-packages").fill(packages)
    dialog.get_by_test_id("jp-condatainer-create-channels").fill(channels)


def walk_through(page, shots: Path, root: Path) -> None:
    from playwright.sync_api import expect

    def shot(name: str) -> None:
        # Transitions (the progress bar) are fast-forwarded to where they are heading.
        page.screenshot(path=str(shots / f"{name}.png"), animations="disabled")

    def jobs(target: str, kind: str, state: str = ""):
        """The job rows of one kind ("Create", "Install", "Remove") on one env."""
        selector = f'[data-testid="jp-condatainer-job"][data-target="{target}"]'
        return panel.locator(selector + (f'[data-state="{state}"]' if state else "")).filter(has_text=kind)

    def succeeds(row) -> None:
        """Wait for a job to end; fail at once, with what the panel says, when it did not succeed."""
        expect(row).to_have_attribute("data-state", FINAL, timeout=JOB_TIMEOUT_MS)
        assert row.get_attribute("data-state") == "succeeded", row.inner_text()

    def package(name: str):
        return panel.locator(f'[data-testid="jp-condatainer-package-row"][data-package-name="{name}"]')

    # The launcher of a fresh workspace offers the CondaTainer kernel.
    launcher = page.locator(".jp-Launcher")
    expect(launcher.locator(".jp-LauncherCard", has_text=KERNEL_LABEL).first).to_be_visible(timeout=60_000)

    # The panel, from its tab in the left sidebar.
    page.locator('.jp-SideBar.jp-mod-left li[data-id="jp-condatainer-panel"]').click()
    panel = page.get_by_test_id("jp-condatainer-panel")
    expect(panel).to_be_visible()
    python = panel.locator('[data-testid="jp-condatainer-overlay-row"][data-overlay-name="python/3.11"]')
    hello = panel.locator('[data-testid="jp-condatainer-overlay-row"][data-overlay-name="hello/1.0"]')
    expect(panel.get_by_test_id("jp-condatainer-group-sqf")).to_contain_text("Read-only overlays")
    expect(python).to_be_visible()
    expect(python.get_by_test_id("jp-condatainer-open-notebook")).to_be_visible()
    expect(hello).to_contain_text("hello 1.0 - a tiny test tool")
    expect(hello).to_contain_text("HELLO_HOME")
    expect(panel.get_by_test_id("jp-condatainer-group-sif")).to_contain_text("ubuntu24/base_image")
    expect(panel.get_by_test_id("jp-condatainer-group-img")).to_contain_text("Writable envs")
    shot("01-panel")

    # A new env from the test channel through the "New env" dialog; its job runs to success.
    panel.get_by_test_id("jp-condatainer-create-button").click()
    dialog = page.locator(".jp-Dialog")
    fill_create_dialog(dialog, "demo", "zlib, demo-tool", "conda-forge")
    dialog.locator(".jp-mod-accept").click()
    expect(dialog).to_have_count(0)
    create = jobs("demo", "Create")
    expect(create).to_have_count(1)
    # Progress as it happens: the bar and the job's last log lines while it runs (or the job's end,
    # should it be over before a log line arrives).
    running = jobs("demo", "Create", "running")
    ended = create.and_(panel.locator(", ".join(f'[data-state="{state}"]' for state in FINAL_STATES)))
    expect(running.get_by_test_id("jp-condatainer-job-log").or_(ended)).to_be_visible(timeout=JOB_TIMEOUT_MS)
    # One look at the DOM: the job can end between two separate queries (it did, once, in CI).
    bars_of_running_rows = running.evaluate_all(
        "rows => rows.map(row => row.querySelector('[data-testid=\"jp-condatainer-job-progress\"]') !== null)"
    )
    if bars_of_running_rows:
        assert all(bars_of_running_rows), "a running job's row has no progress bar"
        create.scroll_into_view_if_needed()
        shot("02-create-progress")
    else:
        print("the create job ended before the panel showed it running: no 02-create-progress screenshot")
    succeeds(create)
    demo = panel.locator('[data-testid="jp-condatainer-overlay-row"][data-overlay-name="demo"]')
    expect(demo).to_be_visible()
    # "Register as a Jupyter kernel" (on by default): the launcher shows the env's kernel at once.
    expect(launcher.locator(".jp-LauncherCard", has_text="CondaTainer: demo (env)").first).to_be_visible()

    # Its packages; install one and remove one, each a live job.
    demo.get_by_test_id("jp-condatainer-packages-button").click()
    for name in ("zlib", "demo-tool", "libdemo"):
        expect(package(name)).to_be_visible()
    panel.get_by_test_id("jp-condatainer-install-input").fill("demopkg")
    panel.get_by_test_id("jp-condatainer-install-button").click()
    # First the solver's plan; the install runs once applied.
    plan = page.locator(".jp-Dialog").get_by_test_id("jp-condatainer-plan")
    expect(plan).to_contain_text("demopkg")
    expect(plan).to_contain_text("python")  # demopkg's dependency
    shot("03a-install-preview")
    page.locator(".jp-Dialog .jp-mod-accept").click()
    install = jobs("demo", "Install")
    expect(install).to_have_count(1)
    succeeds(install)
    expect(package("demopkg")).to_be_visible()
    expect(package("python")).to_be_visible()  # demopkg's dependency
    package("demo-tool").get_by_test_id("jp-condatainer-package-remove").click()
    expect(page.locator(".jp-Dialog").get_by_test_id("jp-condatainer-plan")).to_contain_text("demo-tool")
    page.locator(".jp-Dialog .jp-mod-accept").click()
    remove = jobs("demo", "Remove")
    expect(remove).to_have_count(1)
    succeeds(remove)
    expect(package("demo-tool")).to_have_count(0)
    expect(package("zlib")).to_be_visible()
    # An install that cannot be solved is refused at its preview, in the solver's words; nothing runs.
    panel.get_by_test_id("jp-condatainer-install-input").fill("demo-broken")
    panel.get_by_test_id("jp-condatainer-install-button").click()
    expect(panel.get_by_test_id("jp-condatainer-error").filter(has_text="libdemo >=3")).to_be_visible(
        timeout=JOB_TIMEOUT_MS
    )
    expect(jobs("demo", "Install").filter(has_text="demo-broken")).to_have_count(0)
    expect(package("demo-broken")).to_have_count(0)
    expect(package("demopkg")).to_be_visible()
    panel.get_by_test_id("jp-condatainer-package-filter").fill("demo")
    expect(panel.get_by_test_id("jp-condatainer-package-row")).to_have_count(1)  # demopkg
    shot("03-packages")

    # A notebook on python/3.11 from the overlay's button; the kernel runs in the container.
    python.get_by_test_id("jp-condatainer-open-notebook").click()
    notebook = page.locator(".jp-NotebookPanel:visible")
    expect(notebook).to_be_visible()
    expect(notebook.locator(".jp-KernelName")).to_have_text(KERNEL_LABEL)
    # Ready when the status bar says so (a cell run while the kernel still starts may be dropped).
    expect(page.locator("#jp-main-statusbar").get_by_text(f"{KERNEL_LABEL} | Idle")).to_be_visible(
        timeout=KERNEL_TIMEOUT_MS
    )
    notebook.locator(".jp-Cell .cm-content").first.click()
    page.keyboard.type("import sys; print(sys.executable)")
    page.keyboard.press("Shift+Enter")
    output = notebook.locator(".jp-OutputArea-output").first
    expect(output).to_have_text("/cnt/python/3.11/bin/python", timeout=KERNEL_TIMEOUT_MS)
    # The start's steps reached the page (event bus): "Kernel starts" lists it as ready, with its
    # container output one click away.
    start = panel.get_by_test_id("jp-condatainer-launch").filter(has_text="condatainer-python-3.11")
    expect(start.first).to_have_attribute("data-state", "ready", timeout=KERNEL_TIMEOUT_MS)
    expect(start.first).to_contain_text("kernel ready after")
    start.first.scroll_into_view_if_needed()
    shot("04a-kernel-starts")
    start.first.get_by_test_id("jp-condatainer-kernel-logs-button").click()
    expect(page.locator(".jp-Dialog").get_by_test_id("jp-condatainer-kernel-log").first).to_contain_text("--existing")
    shot("04b-kernel-logs")
    page.locator(".jp-Dialog .jp-mod-accept").click()
    # A terminal in the kernel's container: its shell has the kernel's python.
    start.first.get_by_test_id("jp-condatainer-kernel-terminal-button").click()
    terminal = page.locator(".jp-Terminal:visible")
    expect(terminal).to_be_visible()
    terminal.click()
    page.keyboard.type("which python\n")
    # xterm.js draws on a canvas: the shell's answer is in the screenshot (tests/test_terminal.py
    # compares it with the kernel's); here the terminal is the server's, with our shell.
    expect(page.locator(".jp-Terminal:visible .xterm-screen")).to_be_visible()
    page.wait_for_timeout(1000)
    shot("04d-kernel-terminal")
    # Disk: the demo env's use of its size, and the image directory's free space.
    disk_env = panel.locator('[data-testid="jp-condatainer-disk-env"][data-env-name="demo"]')
    expect(disk_env).to_contain_text("of 256 MiB used")
    expect(panel.get_by_test_id("jp-condatainer-disk-dir").first).to_contain_text("free of")
    disk_env.scroll_into_view_if_needed()
    shot("04c-disk")
    # The panel shows the overlay in use by that kernel.
    panel.get_by_test_id("jp-condatainer-refresh-button").click()
    expect(python.get_by_test_id("jp-condatainer-badge-in-use")).to_be_visible()
    shot("04-notebook")

    # The notebook records its stack: one on the demo env, saved once its kernel is up; after an
    # install into demo, opening it again says the env moved on.
    demo.get_by_test_id("jp-condatainer-open-notebook").click()
    expect(page.locator("#jp-main-statusbar").get_by_text("CondaTainer: demo (env) | Idle")).to_be_visible(
        timeout=KERNEL_TIMEOUT_MS
    )
    saved = root / "Untitled1.ipynb"

    def recorded_stack():
        page.keyboard.press("Control+s")
        page.wait_for_timeout(300)
        return json.loads(saved.read_text()).get("metadata", {}).get("condatainer") if saved.exists() else None

    stack = poll(recorded_stack, 20, interval=0.5)
    assert stack and stack["env"]["name"] == "demo" and stack["overlays"][-1]["name"] == "demo", stack
    panel.get_by_test_id("jp-condatainer-install-input").fill("demo-tool")
    panel.get_by_test_id("jp-condatainer-install-button").click()
    page.locator(".jp-Dialog .jp-mod-accept").click()
    succeeds(jobs("demo", "Install").filter(has_text="demo-tool"))
    page.goto(page.url.split("/lab")[0] + "/lab/tree/Untitled1.ipynb")
    differences = page.get_by_test_id("jp-condatainer-stack-differences")
    expect(differences).to_contain_text(f"moved on from revision {stack['env']['revision']}", timeout=KERNEL_TIMEOUT_MS)
    shot("06-stack-differs")
    expect(page.get_by_test_id("jp-condatainer-stack-remedies")).to_contain_text("Roll back the env to revision")
    page.locator(".jp-Dialog .jp-mod-reject").click()  # "Keep as it is" (test_stack_dialog_* applies one)

    # The dark theme, from the Settings menu: the panel follows the theme's variables.
    page.locator(".lm-MenuBar-itemLabel", has_text="Settings").click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Theme$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^JupyterLab Dark$")).click()
    expect(page.locator("body")).to_have_attribute("data-jp-theme-light", "false")
    page.wait_for_function(  # the theme's stylesheet is applied, not only announced
        "getComputedStyle(document.querySelector('#jp-condatainer-panel')).backgroundColor !== 'rgb(255, 255, 255)'"
    )
    shot("05-dark")


# --- notebooks run headless, opened after their stack changed -----------------------------------


@contextmanager
def browsing(lab: Lab, shots: Path, failure_shot: str) -> Iterator:
    """A Chromium page for ``lab``; on a failure, a screenshot (``failure_shot``) and the server's log."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=UI_TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
        try:
            yield page
        except BaseException:
            page.screenshot(path=str(shots / f"{failure_shot}.png"))
            print(f"jupyter lab log:\n{lab.log_tail()}")
            raise
        finally:
            browser.close()


def executed_notebook(root: Path, spec) -> str:
    """A notebook that ``nbconvert --execute`` ran on the kernelspec ``spec``, as a batch run leaves
    it (its stack record in ``language_info``); its path below the server's root."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell("6 * 7")])
    nb.metadata["kernelspec"] = {"name": spec.name, "display_name": spec.display_name, "language": "python"}
    nbformat.write(nb, root / "ran.ipynb")
    convert = [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", "--inplace"]
    subprocess.run([*convert, str(root / "ran.ipynb")], check=True, capture_output=True, timeout=300)
    return "ran.ipynb"


@pytest.fixture
def headless_lab(user_layout, conda_channel):
    """``jupyter lab`` with this checkout's panel and the test channel, its root still empty."""
    quiet_profile()
    this_checkouts_panel()
    root = user_layout / "notebooks"
    root.mkdir()
    with Lab(root, user_layout / "lab.log", {**os.environ, **conda_channel.env}) as server:
        yield server


def test_stack_dialog_switches_a_headless_notebook_to_the_kernel_with_its_images(headless_lab, user_layout, tmp_path):
    """A notebook nbconvert ran on python/3.11 + hello/1.0, whose hello/1.0 then changed; another
    kernelspec has the recorded images (the old hello kept under another name)."""
    from playwright.sync_api import expect

    from kernel_provider.kernel.kernelspecs import KernelspecStore, custom_spec

    lab, images, shots = headless_lab, user_layout / "images", screenshot_dir(tmp_path)
    used = custom_spec(["python/3.11", "hello/1.0"], label="used")
    KernelspecStore().write(used)
    notebook = executed_notebook(lab.root, used)
    shutil.copy2(images / "hello--1.0.sqf", images / "hellokept--1.0.sqf")
    KernelspecStore().write(custom_spec(["python/3.11", "hellokept/1.0"], label="kept"))
    hello = images / "hello--1.0.sqf"  # a link to the cache's image: replaced, never written
    content = hello.read_bytes()
    hello.unlink()
    hello.write_bytes(content + bytes(4096))  # padded: other content, still a SquashFS that mounts

    with browsing(lab, shots, "stack-remedies-failure") as page:
        page.goto(f"{lab.url}/lab/tree/{notebook}?reset&token={lab.token}")
        dialog = page.locator(".jp-Dialog", has_text="This notebook ran on another stack")
        differences = dialog.get_by_test_id("jp-condatainer-stack-differences")
        expect(differences).to_contain_text("hello/1.0 was rebuilt", timeout=KERNEL_TIMEOUT_MS)
        expect(dialog.get_by_test_id("jp-condatainer-stack-remedies")).to_contain_text("CondaTainer: kept")
        page.screenshot(path=str(shots / "07-stack-remedies.png"), animations="disabled")
        dialog.get_by_role("button", name="Switch to kernel CondaTainer: kept").click()
        status = page.locator("#jp-main-statusbar").get_by_text("CondaTainer: kept | Idle")
        expect(status).to_be_visible(timeout=KERNEL_TIMEOUT_MS)
        page.screenshot(path=str(shots / "07a-kernel-switched.png"), animations="disabled")


def test_stack_dialog_freezes_the_recorded_env_revision_and_switches_to_it(headless_lab, tmp_path):
    """A notebook nbconvert ran on an env at revision 0; the env moved on. A rollback asks first and
    says it changes the env for everyone; a freeze of revision 0 needs no confirmation and ends on
    the kernel it registers."""
    from playwright.sync_api import expect

    from kernel_provider.kernel.kernelspecs import KernelspecStore, custom_spec

    lab, shots = headless_lab, screenshot_dir(tmp_path)
    lab.run_job("/condatainer/api/overlays", {"name": "hd", "size_mb": 128, "packages": ["zlib"]})
    # Shared: the page opened again starts a kernel of its own next to the first one's, on one mount.
    spec = custom_spec(["python/3.11", "hd"], label="hd", writable=True, share=True)
    KernelspecStore().write(spec)
    notebook = executed_notebook(lab.root, spec)
    lab.run_job("/condatainer/api/overlays/hd/packages", {"specs": ["demo-tool"]})

    with browsing(lab, shots, "env-remedies-failure") as page:
        url = f"{lab.url}/lab/tree/{notebook}?reset&token={lab.token}"
        page.goto(url)
        dialog = page.locator(".jp-Dialog", has_text="This notebook ran on another stack")
        differences = dialog.get_by_test_id("jp-condatainer-stack-differences")
        expect(differences).to_contain_text("the env hd moved on from revision 0 to 1", timeout=KERNEL_TIMEOUT_MS)
        page.screenshot(path=str(shots / "08-env-remedies.png"), animations="disabled")
        dialog.get_by_role("button", name="Roll back the env to revision 0").click()
        confirm = page.locator(".jp-Dialog", has_text="Roll back hd for everyone?")
        expect(confirm).to_contain_text("This changes hd for everyone")
        page.screenshot(path=str(shots / "08a-rollback-confirm.png"), animations="disabled")
        confirm.locator(".jp-mod-reject").click()  # declined: nothing runs (the history below)
        expect(confirm).to_have_count(0)

        page.goto(url)  # opened again: asked again
        freeze = "Freeze revision 0 into an overlay and switch to a kernel on it"
        dialog.get_by_role("button", name=freeze).click(timeout=KERNEL_TIMEOUT_MS)
        status = page.locator("#jp-main-statusbar").get_by_text("CondaTainer: hd-rev0/1.0 (frozen) | Idle")
        expect(status).to_be_visible(timeout=JOB_TIMEOUT_MS)
        page.screenshot(path=str(shots / "08b-frozen-kernel.png"), animations="disabled")
    history = lab.get("/condatainer/api/overlays/hd/history")["revisions"]
    assert len(history) == 2, "the env is as it was: no rollback ran"


# --- what a user meets off the happy path ------------------------------------------------------

UNREACHABLE_ALIAS = "https://channel.invalid/"  # RFC 2606: never resolves, with or without network


@pytest.fixture
def failing_lab(user_layout, conda_channel):
    """``jupyter lab`` whose channel alias cannot be reached, with this checkout's panel build
    (first in JUPYTER_PATH), a corrupt overlay, a kernel of the writable env and a broken kernel."""
    from kernel_provider.kernel.kernelspecs import KernelspecStore, custom_spec

    quiet_profile()
    this_checkouts_panel()
    images = user_layout / "images"
    (images / "corrupt--1.0.sqf").write_bytes(b"this is not squashfs" * 100)
    (images / "corrupt--1.0.sqf.env").write_text("1BAD=x\n")  # a sidecar line the kernel will skip
    store = KernelspecStore()
    store.write(custom_spec(["python/3.11", "corrupt/1.0"], label="corrupt"))
    # Not shared (the default since kernels of a stack share its instance): a second kernel is refused.
    store.write(custom_spec(["python/3.11", "env"], label="env rw", writable=True, share=False))
    store.write(custom_spec(["python/3.11", "gone/1.0"], label="gone"))
    root = user_layout / "notebooks"
    root.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("MAMBA_CHANNEL_ALIAS", "CONDA_CHANNEL_ALIAS")}
    with Lab(root, user_layout / "lab.log", {**env, "MAMBA_CHANNEL_ALIAS": UNREACHABLE_ALIAS}) as server:
        yield server


def test_failure_walk_every_first_line_says_what_happened_and_what_to_do(
    failing_lab, conda_channel, tmp_path, user_layout
):
    lab = failing_lab
    shots = screenshot_dir(tmp_path)
    with browsing(lab, shots, "failure-walk-failure") as page:
        page.goto(f"{lab.url}/lab?reset&token={lab.token}")
        failure_walk(page, lab, shots, conda_channel)
    lab.stop()
    assert lab.process.returncode == 0, lab.log_tail()


def failure_walk(page, lab: Lab, shots: Path, conda_channel) -> None:
    from playwright.sync_api import expect

    def shot(name: str) -> None:
        page.screenshot(path=str(shots / f"{name}.png"), animations="disabled")

    def new_env(name: str, packages: str, channels: str):
        panel.get_by_test_id("jp-condatainer-create-button").click()
        dialog = page.locator(".jp-Dialog")
        fill_create_dialog(dialog, name, packages, channels)
        dialog.locator(".jp-mod-accept").click()
        expect(dialog).to_have_count(0)
        job = panel.locator(f'[data-testid="jp-condatainer-job"][data-target="{name}"]')
        expect(job).to_have_attribute("data-state", "failed", timeout=JOB_TIMEOUT_MS)
        return job

    def start_error(label: str) -> str:
        """Click a Launcher tile whose kernel cannot start; the error dialog's text."""
        if not page.locator(".jp-Launcher:visible").count():
            page.locator(".lm-MenuBar-itemLabel", has_text="File").click()
            page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^New Launcher$")).click()
        page.locator(".jp-Launcher:visible .jp-LauncherCard", has_text=label).first.click()
        dialog = page.locator(".jp-Dialog", has_text="Error Starting Kernel")
        expect(dialog).to_be_visible(timeout=KERNEL_TIMEOUT_MS)
        return dialog.inner_text()

    def close_dialogs() -> None:
        """Close the error (or notice), then JupyterLab's "Select Kernel" that follows a failed start."""
        page.locator(".jp-Dialog .jp-mod-accept").first.click()
        select = page.locator(".jp-Dialog", has_text="Select Kernel")
        if select.count() or select.is_visible():
            select.get_by_role("button", name="No Kernel").click()
        expect(page.locator(".jp-Dialog")).to_have_count(0)

    launcher = page.locator(".jp-Launcher")
    expect(launcher.locator(".jp-LauncherCard", has_text=KERNEL_LABEL).first).to_be_visible(timeout=60_000)
    # A user's kernel whose overlay is not found is kept, and shown as broken.
    expect(launcher.locator(".jp-LauncherCard", has_text="CondaTainer: gone (broken)").first).to_be_visible()
    page.locator('.jp-SideBar.jp-mod-left li[data-id="jp-condatainer-panel"]').click()
    panel = page.get_by_test_id("jp-condatainer-panel")
    expect(panel.get_by_test_id("jp-condatainer-group-img")).to_contain_text("Writable conda envs")
    expect(panel.get_by_test_id("jp-condatainer-broken-kernel")).to_contain_text(
        "CondaTainer: gone (broken) is broken: overlay 'gone/1.0' not found in"
    )

    # No channel: said up front, before "New env"; a create fails with that first line and a notification.
    problem = panel.get_by_test_id("jp-condatainer-channel-problem")
    expect(problem).to_contain_text(
        f"No conda channel could be reached: the server's channel alias {UNREACHABLE_ALIAS}"
    )
    job = new_env("nochan", "zlib", "conda-forge")
    expect(job.get_by_test_id("jp-condatainer-error-first")).to_have_text(
        "No conda channel could be reached. Give a channel this machine can reach: a local "
        "file:///path/to/channel in the channel field, or start the server with MAMBA_CHANNEL_ALIAS set "
        "to a reachable mirror in its environment"
    )
    expect(page.locator(".Toastify__toast", has_text="create nochan failed: No conda channel")).to_be_visible()
    shot("11-no-channel")

    # The local channel the hint suggests works in the channel field; an unsolvable request says so.
    job = new_env("conflict", "demo-broken", conda_channel.url)
    expect(job.get_by_test_id("jp-condatainer-error-first")).to_have_text(
        "These packages cannot be installed together: the solver found a conflict. Relax or change the "
        "versions asked for (the solver's reasons follow); nothing was changed"
    )
    expect(job.get_by_test_id("jp-condatainer-error-detail")).to_contain_text("libdemo >=3")
    expect(job.get_by_test_id("jp-condatainer-job-log")).to_have_count(0)  # the detail is shown once
    job.scroll_into_view_if_needed()
    shot("12-solver-conflict")

    # What the kernel will skip of an overlay's sidecar is said in its row.
    corrupt = panel.locator('[data-testid="jp-condatainer-overlay-row"][data-overlay-name="corrupt/1.0"]')
    expect(corrupt.get_by_test_id("jp-condatainer-overlay-warning")).to_contain_text(
        "'1BAD' is not a variable name (letters, digits and '_', not starting with a digit); this line is skipped"
    )

    # A corrupt overlay: the kernel's error dialog opens with what happened and what to do.
    text = start_error("CondaTainer: corrupt")
    assert (
        "The kernel 'CondaTainer: corrupt' could not start: the image corrupt--1.0.sqf is damaged or not an "
        "image. Rebuild or copy it again" in text
    ), text
    shot("13-corrupt-overlay")
    close_dialogs()

    # The writable env open in one notebook: Delete says who holds it before any confirmation,
    # and a second kernel of it names that notebook.
    lab.post(
        "/api/sessions",
        {"path": "first.ipynb", "name": "first.ipynb", "type": "notebook", "kernel": {"name": "condatainer-env-rw"}},
    )
    panel.get_by_test_id("jp-condatainer-refresh-button").click()
    env = panel.locator('[data-testid="jp-condatainer-overlay-row"][data-overlay-name="env"]')
    expect(env.get_by_test_id("jp-condatainer-in-use-by")).to_have_text("In use by the notebook first.ipynb")
    expect(env.get_by_test_id("jp-condatainer-kernel-stack")).to_have_text("Its kernel mounts python/3.11 + env")
    env.get_by_role("button", name="Delete env").click()
    dialog = page.locator(".jp-Dialog")
    expect(dialog).to_contain_text("env is in use by the notebook first.ipynb. Shut that down first")
    shot("14-env-in-use-delete")
    close_dialogs()
    text = start_error("CondaTainer: env rw")
    assert "could not start: the env env.img" in text and "the notebook first.ipynb" in text, text
    shot("15-env-in-use-start")
    close_dialogs()
    # Terminal on that env's row is refused while the notebook has it read-write, saying who and what to do.
    env.get_by_test_id("jp-condatainer-overlay-terminal").click()
    refused = env.get_by_test_id("jp-condatainer-error")
    expect(refused).to_contain_text(
        "env is open read-write by the notebook first.ipynb; open the terminal from that kernel"
    )
    refused.scroll_into_view_if_needed()
    shot("16-env-terminal-refused")
    # On an overlay without a kernel, it opens a terminal in the stack a kernel on it would run.
    hello = panel.locator('[data-testid="jp-condatainer-overlay-row"][data-overlay-name="hello/1.0"]')
    hello.get_by_test_id("jp-condatainer-overlay-terminal").click()
    expect(page.locator(".jp-Terminal:visible .xterm-screen")).to_be_visible()
    page.wait_for_timeout(1000)  # xterm.js draws on a canvas: the banner and prompt are in the screenshot
    shot("17-overlay-terminal")
