"""The container side imports nothing but the standard library, IPython and IPython's own requirements.

``kernel_provider/incontainer/`` runs with the container's Python, where none of the host's
packages (jupyter_client, tornado, zmq, filelock, …) exist. Each of its modules is imported in
a fresh ``python -I -S`` (no ``.pth`` files run) whose path finder finds no other top-level
module, as if it were not installed; the shared venv's site-packages stay on ``sys.path``, so
only the gate (not a missing package) can refuse. An import the code guards with
``except ImportError`` (an optional one) passes, as it should.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import kernel_provider

PACKAGE_ROOT = Path(kernel_provider.__file__).resolve().parent.parent
INCONTAINER = PACKAGE_ROOT / "kernel_provider" / "incontainer"
MODULES = sorted(f"kernel_provider.incontainer.{path.stem}" for path in INCONTAINER.glob("*.py"))

# Runs in the child: the path finder finds only ALLOWED top-level modules, then the module is imported.
GATE = """
import importlib, json, sys
from importlib.machinery import PathFinder

allowed, paths, module = set(json.loads(sys.argv[1])), json.loads(sys.argv[2]), sys.argv[3]
sys.path[:0] = paths


class OnlyAllowed(PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] not in allowed:
            return None  # as if it were not installed
        return super().find_spec(name, path, target)


sys.meta_path[sys.meta_path.index(PathFinder)] = OnlyAllowed
importlib.import_module(module)
"""


def normalized(name: str) -> str:
    """A distribution's name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements_closure(root: str) -> set[str]:
    """``root`` and every distribution it needs, recursively, as installed here: without extras
    and without requirements whose markers do not apply to this Python and platform."""
    found, todo = set(), [root]
    while todo:
        name = normalized(todo.pop())
        if name in found:
            continue
        try:
            requires = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here, so the container side could not rely on it either
        found.add(name)
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return found


def top_level_modules(distributions: set[str]) -> set[str]:
    """The importable top-level names these distributions install."""
    return {
        module
        for module, owners in importlib.metadata.packages_distributions().items()
        if any(normalized(owner) in distributions for owner in owners)
    }


@functools.cache
def allowed_modules() -> frozenset[str]:
    """What the container side may import: the standard library, IPython and its requirements, ours."""
    return frozenset(sys.stdlib_module_names) | top_level_modules(requirements_closure("ipython")) | {"kernel_provider"}


def import_behind_the_gate(module: str) -> subprocess.CompletedProcess:
    """Import ``module`` in a fresh interpreter where only :func:`allowed_modules` can be imported."""
    paths = [str(PACKAGE_ROOT), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    return subprocess.run(
        [sys.executable, "-I", "-S", "-c", GATE, json.dumps(sorted(allowed_modules())), json.dumps(paths), module],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("module", MODULES)
def test_the_container_side_needs_only_stdlib_and_ipython(module):
    result = import_behind_the_gate(module)
    assert result.returncode == 0, f"{module} imports what a container lacks:\n{result.stderr}"


def test_ipython_itself_passes_the_gate():
    """The allowed set is complete: IPython's own imports go through (else every check below
    would prove nothing)."""
    result = import_behind_the_gate("IPython.core.magic")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("host_only", ["jupyter_client", "jupyter_core", "tornado", "zmq", "filelock"])
def test_the_gate_refuses_host_packages(host_only):
    """Packages of the host side, installed right here: the gate, not their absence, hides them."""
    assert importlib.util.find_spec(host_only) is not None
    result = import_behind_the_gate(host_only)
    assert result.returncode != 0
    assert f"ModuleNotFoundError: No module named '{host_only}'" in result.stderr
