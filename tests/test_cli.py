"""``jupyter condatainer``: help that helps, its configuration file, and exit codes for bad input.

Nothing here needs Apptainer: help, configuration and refusals happen before any container.
The commands run as a user runs them (a subprocess) in a private Jupyter layout.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import placeholder_images

import kernel_provider
from kernel_provider.cli.base import CONFIG_FILE_NAME, CommandGroup
from kernel_provider.cli.main import CondaTainerApp
from kernel_provider.host.state import InstanceRecord, Owner, StateStore
from kernel_provider.kernel.kernelspecs import KernelspecStore, custom_spec

PACKAGE_ROOT = Path(kernel_provider.__file__).resolve().parent.parent


def commands(app=CondaTainerApp, path: str = "jupyter condatainer"):
    """(command line, app) of the command and of every subcommand below it."""
    yield path, app
    if issubclass(app, CommandGroup):
        for name, (subapp, _) in app.subcommands.items():
            yield from commands(subapp, f"{path} {name}")


COMMANDS = dict(commands())


def words(text: str) -> str:
    """Text with its line breaks and indentation folded, as help wraps it."""
    return " ".join(text.split())


@pytest.fixture
def run(tmp_path):
    """Run ``jupyter condatainer ARGS`` with its own Jupyter config and data directories and
    ``tmp_path/images`` as image directory (the rest of the environment as it is at the call)."""

    def call(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        env = {
            **os.environ,
            "PYTHONPATH": str(PACKAGE_ROOT),
            "HOME": str(tmp_path),
            "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
            "JUPYTER_DATA_DIR": str(tmp_path / "data"),
            "JUPYTER_PATH": str(tmp_path / "data"),
            "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
            "CNT_EXTRA_IMAGE_DIRS": str(tmp_path / "images"),
        }
        argv = [sys.executable, "-m", "kernel_provider.cli.main", *args]
        return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=timeout)

    return call


@pytest.mark.parametrize("line", COMMANDS)
def test_help_starts_with_a_summary_then_examples_of_that_command(line):
    app = COMMANDS[line]
    help_text = "\n".join(app().emit_help())
    assert app.description != "A Jupyter Application"
    summary, *rest = app.description.split("\n\n")
    first, examples_and_rest = help_text.split("\n\nExamples\n--------\n", 1)
    assert words(first) == words(summary)
    assert all(words(paragraph) in words(help_text) for paragraph in rest)
    examples = help_text.index("Examples\n--------")
    assert examples < help_text.index("Options\n=======")
    assert "Subcommands" not in help_text or examples < help_text.index("Subcommands\n===========")
    example_lines = app.examples.strip().splitlines()
    assert example_lines and all(example.startswith(line) for example in example_lines), example_lines


def test_help_as_the_user_sees_it(run):
    result = run("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Jupyter kernels in CondaTainer environments on Apptainer.\n\nExamples\n")
    assert "    jupyter condatainer kernelspecs sync" in result.stdout
    assert f"{CONFIG_FILE_NAME}.py" in result.stdout


def test_help_all_lists_the_settings_and_the_kernels_options(run):
    result = run("kernelspecs", "add", "--help-all")
    assert result.returncode == 0, result.stderr
    for option in (
        "--CondaTainerConfig.image_dirs",
        "--CondaTainerConfig.apptainer_bin",
        "--CondaTainerProvisioner.overlays",
        "--CondaTainerProvisioner.transport",
        "--AddApp.overlay",
    ):
        assert option in result.stdout, option


def test_generate_config_writes_the_file_the_commands_read(run, tmp_path):
    result = run("--generate-config")
    assert result.returncode == 0, result.stderr
    config = tmp_path / "config" / f"{CONFIG_FILE_NAME}.py"
    text = config.read_text()
    assert "# c.CondaTainerConfig.image_dirs = []" in text
    assert "# c.CondaTainerProvisioner.overlays = []" in text
    images = placeholder_images(tmp_path / "images", ["python--3.12.sqf"])
    config.write_text(f"{text}\nc.CondaTainerConfig.image_dirs = [{str(images)!r}]\n")
    result = run("kernelspecs", "sync")
    assert result.returncode == 0, result.stderr
    assert "written   condatainer-python-3.12" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bogus"], "unknown command 'bogus'; use one of kernelspecs, instances, env, info (each with --help)"),
        (["kernelspecs", "bogus"], "unknown command 'bogus'; use one of sync, list, add, remove (each with --help)"),
        ([], "give a command: use one of kernelspecs, instances, env, info (each with --help)"),
        (
            ["env"],
            "give a command: use one of create, install, remove, resize, delete, history, export, rollback, freeze",
        ),
        (["kernelspecs", "add"], "usage: jupyter condatainer kernelspecs add NAME --overlay python/3.11"),
        (["kernelspecs", "add", "a", "b", "--overlay", "x"], "unexpected argument 'b'; usage: jupyter condatainer"),
        (["kernelspecs", "add", "bio"], "give at least one --overlay or --env"),
        (["kernelspecs", "remove"], "usage: jupyter condatainer kernelspecs remove NAME [NAME …]"),
        (["kernelspecs", "remove", "nosuch"], "no CondaTainer kernelspec 'nosuch'; nothing was removed. Ours: none"),
        (["kernelspecs", "list", "extra"], "unexpected argument 'extra'; usage: jupyter condatainer kernelspecs list"),
        (
            ["kernelspecs", "sync", "a", "b"],
            "unexpected arguments 'a' 'b'; usage: jupyter condatainer kernelspecs sync",
        ),
        (["instances", "list", "x"], "unexpected argument 'x'; usage: jupyter condatainer instances list [--json]"),
        (["env", "rollback", "bio", "two"], "revision must be a number, not 'two'"),
        (["env", "history"], "usage: jupyter condatainer env history NAME [--json]"),
        (["env", "delete", "a", "b"], "unexpected argument 'b'; usage: jupyter condatainer env delete NAME"),
        (["env", "install", "bio"], "usage: jupyter condatainer env install NAME SPEC [SPEC …] [--channel C]"),
        (["env", "resize", "bio"], "give the new size in MiB: jupyter condatainer env resize NAME --size MB"),
        (["instances", "stop"], "give instance names, --orphans or --warm"),
    ],
    ids=[
        "unknown",
        "unknown-sub",
        "none",
        "none-sub",
        "add-no-name",
        "add-two-names",
        "add-no-overlay",
        "remove-no-name",
        "remove-unknown",
        "list-extra",
        "sync-extra",
        "instances-list-extra",
        "rollback-bad-revision",
        "history-no-name",
        "delete-extra",
        "install-no-spec",
        "resize-no-size",
        "stop-nothing",
    ],
)
def test_bad_input_exits_non_zero_saying_what_to_do(run, args, message):
    result = run(*args)
    assert result.returncode == 1, result
    assert message in result.stderr, result.stderr
    assert result.stderr.startswith("error: ") and "CRITICAL" not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_add_refuses_files_that_are_not_images_and_lists_what_there_is(run, tmp_path):
    placeholder_images(tmp_path / "images", ["ubuntu24--base_image.sif", "python--3.12.sqf", "hello--1.0.sqf"])
    unknown = run("kernelspecs", "add", "x", "--overlay", "pyton/3.12")
    not_image = run("kernelspecs", "add", "x", "--overlay", "python/3.12")
    assert unknown.returncode == 1
    assert "overlay 'pyton/3.12' not found in" in unknown.stderr
    assert "Available: hello/1.0, python/3.12." in unknown.stderr
    assert not_image.returncode == 1
    assert "is not a SIF base image (it is damaged, or another kind of file with that extension)" in not_image.stderr
    assert not (tmp_path / "data" / "kernels").exists(), "nothing is written for a refused stack"


def test_sync_keeps_a_users_kernelspec_whose_images_are_gone_and_marks_it_broken(run, tmp_path):
    images = placeholder_images(tmp_path / "images", ["ubuntu24--base_image.sif", "python--3.12.sqf"])
    kernel = tmp_path / "data" / "kernels" / "condatainer-bio" / "kernel.json"
    KernelspecStore(tmp_path / "data" / "kernels").write(custom_spec(["python/3.12", "samtools/1.0"], label="bio"))
    broken = run("kernelspecs", "sync")
    listed = run("kernelspecs", "list")
    spec = json.loads(kernel.read_text())
    (images / "samtools--1.0.sqf").write_bytes(b"")
    mended = run("kernelspecs", "sync")
    assert broken.returncode == 0, broken.stderr
    assert "broken    condatainer-bio: overlay 'samtools/1.0' not found" in broken.stdout
    assert "(kept; fix its images or: jupyter condatainer kernelspecs remove condatainer-bio)" in broken.stdout
    assert spec["display_name"] == "CondaTainer: bio (broken)"
    assert spec["metadata"]["condatainer"]["broken"].startswith("overlay 'samtools/1.0' not found")
    assert "BROKEN: overlay 'samtools/1.0' not found" in listed.stdout
    assert mended.returncode == 0 and "written   condatainer-bio" in mended.stdout and "broken" not in mended.stdout
    assert json.loads(kernel.read_text())["display_name"] == "CondaTainer: bio"


def test_instances_list_has_a_header_the_stack_and_the_kernels_or_says_none(run, tmp_path):
    empty = run("instances", "list")
    assert empty.returncode == 0, empty.stderr
    assert empty.stdout.startswith("none")
    store = StateStore(tmp_path / ".local" / "state" / "condatainer" / "instance")
    dead = Owner(pid=1, start_time=-1, host=socket.gethostname())
    store.write(
        InstanceRecord(
            "jct-0000-aa-bb",
            "/i/ubuntu24--base_image.sif",
            ["/i/python--3.11.sqf:ro", "/i/bio.img:rw"],
            [],
            [],
            {},
            dead,
            "k",
            ["k1", "k2"],
            {"k1": "work/analysis.ipynb"},
        )
    )
    listed = run("instances", "list")
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["INSTANCE", "STATE", "SERVER", "STACK", "KERNELS"]
    assert row.split("  ")[0] == "jct-0000-aa-bb" and " stopped " in row and " ORPHAN " in row
    assert "ubuntu24--base_image.sif + python--3.11.sqf + bio.img (rw)" in row
    assert row.endswith("the notebook analysis.ipynb and the kernel k2")


@pytest.mark.integration
def test_env_commands_and_a_stack_without_python_on_real_images(image_layout, conda_channel, monkeypatch, run):
    """The panel's env operations from a terminal, with a local file:// channel typed as the only
    channel and no channel alias (a machine without network), and their refusals."""
    for variable in ("MAMBA_CHANNEL_ALIAS", "CONDA_CHANNEL_ALIAS"):
        monkeypatch.delenv(variable, raising=False)
    no_python = run("kernelspecs", "add", "tools", "--overlay", "hello/1.0")
    assert no_python.returncode == 1
    assert no_python.stderr.startswith("error: no `python` on the container PATH of this stack (hello/1.0). Add")
    assert "Available: python/3.11." in no_python.stderr

    channel = ["--channel", conda_channel.url]
    created = run("env", "create", "cli", "zlib", *channel, "--size", "256", "--kernel", timeout=300)
    assert created.returncode == 0, created.stderr + created.stdout
    assert "created " in created.stdout and (image_layout / "images" / "cli.img").is_file()
    assert "registered kernel condatainer-cli-env" in created.stdout
    installed = run("env", "install", "cli", "demo-tool", *channel, timeout=300)
    assert installed.returncode == 0, installed.stderr + installed.stdout
    assert "install demo-tool: done" in installed.stdout
    conflict = run("env", "install", "cli", "demo-broken", *channel, timeout=300)
    assert conflict.returncode == 1
    first, *detail = conflict.stderr.splitlines()
    assert first == (
        "error: These packages cannot be installed together: the solver found a conflict. Relax or change "
        "the versions asked for (the solver's reasons follow); nothing was changed"
    )
    assert any("libdemo >=3" in line for line in detail)
    removed = run("env", "remove", "cli", "demo-tool", timeout=300)
    assert removed.returncode == 0, removed.stderr + removed.stdout
    grown = run("env", "resize", "cli", "--size", "512", timeout=300)
    assert grown.returncode == 0 and "cli grown to 512 MiB" in grown.stdout, grown.stderr + grown.stdout
    assert (image_layout / "images" / "cli.img").stat().st_size == 512 * 1024 * 1024
    deleted = run("env", "delete", "cli")
    assert deleted.returncode == 0 and deleted.stdout == "deleted cli\n", deleted.stderr
    assert not (image_layout / "images" / "cli.img").exists()
    assert "condatainer-cli-env" not in run("kernelspecs", "list").stdout
