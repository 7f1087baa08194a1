"""``jupyter condatainer``: help that helps, its configuration file, and exit codes for bad input.

Nothing here needs Apptainer: help, configuration and refusals happen before any container.
The commands run as a user runs them (a subprocess) in a private Jupyter layout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import placeholder_images

import kernel_provider
from kernel_provider.cli.base import CONFIG_FILE_NAME, CommandGroup
from kernel_provider.cli.main import CondaTainerApp

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
    """Run ``jupyter condatainer ARGS`` with its own Jupyter config and data directories."""
    env = {
        **os.environ,
        "PYTHONPATH": str(PACKAGE_ROOT),
        "HOME": str(tmp_path),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
        "JUPYTER_PATH": str(tmp_path / "data"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
    }

    def call(*args: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "kernel_provider.cli.main", *args]
        return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)

    return call


@pytest.mark.parametrize("line", COMMANDS)
def test_help_starts_with_a_description_then_examples_of_that_command(line):
    app = COMMANDS[line]
    help_text = "\n".join(app().emit_help())
    assert app.description != "A Jupyter Application"
    assert words(help_text).startswith(words(app.description))
    examples = help_text.index("Examples\n--------")
    assert examples < help_text.index("Options\n=======")
    assert "Subcommands" not in help_text or examples < help_text.index("Subcommands\n===========")
    example_lines = app.examples.strip().splitlines()
    assert example_lines and all(example.startswith(line) for example in example_lines), example_lines


def test_help_as_the_user_sees_it(run):
    result = run("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Jupyter kernels in CondaTainer environments on Apptainer.\n")
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
        (["bogus"], "unknown command 'bogus'; use one of kernelspecs, instances, env (each with --help)"),
        (["kernelspecs", "bogus"], "unknown command 'bogus'; use one of sync, list, add, remove (each with --help)"),
        ([], "give a command: use one of kernelspecs, instances, env (each with --help)"),
        (["env"], "give a command: use one of history, export, rollback, freeze (each with --help)"),
        (["kernelspecs", "add"], "usage: jupyter condatainer kernelspecs add NAME --overlay python/3.11"),
        (["kernelspecs", "add", "bio"], "give at least one --overlay or --env"),
        (["env", "rollback", "bio", "two"], "revision must be a number, not 'two'"),
        (["instances", "stop"], "give instance names, --orphans or --warm"),
    ],
    ids=[
        "unknown",
        "unknown-sub",
        "none",
        "none-sub",
        "add-no-name",
        "add-no-overlay",
        "rollback-bad-revision",
        "stop-nothing",
    ],
)
def test_bad_input_exits_non_zero_saying_what_to_do(run, args, message):
    result = run(*args)
    assert result.returncode == 1, result
    assert message in result.stderr, result.stderr
