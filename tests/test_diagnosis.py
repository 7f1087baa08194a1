"""The first line of an error, read from real tool output (``tests/tool_outputs/``).

Each file is what Apptainer 1.4.5 or CondaTainer's micromamba wrappers printed for that
failure on this project's test machine (host name of the default channel replaced).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kernel_provider.host.holders import ANOTHER_PROGRAM, holder, holders
from kernel_provider.host.process import failure
from kernel_provider.host.state import InstanceRecord, Owner, StateStore
from kernel_provider.incontainer.diagnosis import Context, diagnose, explain

OUTPUTS = Path(__file__).parent / "tool_outputs"

EXPECTED = {
    "corrupt_sqf_instance": ("The image bad--1.0.sqf is damaged or not an image", "Rebuild or copy it again"),
    "corrupt_img": ("The image junk.img is damaged or not an image", "Rebuild"),
    "corrupt_sif": ("The image junk.sif is damaged or not an image", "Rebuild"),
    "missing_sqf": ("The image gone--1.0.sqf is missing", "put it back"),
    "missing_sif": ("The image missing.sif is missing", "put it back"),
    "unreadable_sqf": ("You may not read the image unread--1.0.sqf", "chmod a+r"),
    "unreadable_sif": ("You may not read the image unread.sif", "chmod a+r"),
    "img_in_use_instance": (f"The env env.img is open for writing by {ANOTHER_PROGRAM}", "shut that kernel down"),
    "no_python": ("This stack has no Python", "Add a Python overlay (e.g. python/3.11)"),
    "no_userns": ("Apptainer cannot create a user namespace on this machine", "max_user_namespaces"),
    "no_fuse": ("Apptainer cannot mount the overlays: FUSE is not available", "/dev/fuse"),
    "no_subuid": ("--fakeroot needs a subuid range and jctuser has none", "/etc/subuid"),
    "disk_full": ("The disk (or your quota) is full", "Free some space"),
    "solver_conflict": ("These packages cannot be installed together: the solver found a conflict", "Relax"),
    "not_found": ("The package nosuchpkg is not in the channels", "Check its name"),
    "no_channel": ("No conda channel could be reached", "file:///path/to/channel"),
}


def test_every_captured_output_has_an_expectation():
    assert sorted(p.stem for p in OUTPUTS.glob("*.txt")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_output_gets_a_plain_first_line_and_keeps_the_tool_lines_as_detail(name):
    output = (OUTPUTS / f"{name}.txt").read_text()
    headline, hint = EXPECTED[name]
    found = diagnose(output, Context(user="jctuser"))
    assert found is not None and found.headline == headline and hint in found.hint, found
    message = explain("apptainer instance start", output, Context(user="jctuser"))
    first, second, *detail = message.splitlines()
    assert first == found.line and first.startswith(headline) and "FATAL" not in first
    assert second == "apptainer instance start failed:"
    plain = output.replace("\x1b[91m", "").replace("\x1b[0m", "")
    fatal = [line.rstrip() for line in plain.splitlines() if line.startswith(("FATAL", "ERROR"))]
    assert fatal and all(line in detail for line in fatal)
    assert not any("gocryptfs" in line or "Instance stats" in line or "\x1b" in line for line in detail)


def test_output_nobody_explains_stays_as_it_was():
    assert diagnose("FATAL:   something new went wrong") is None
    assert failure("mm-install", ["FATAL:   something new went wrong"]) == (
        "mm-install failed:\nFATAL:   something new went wrong"
    )


def test_in_use_names_the_notebook_holding_the_env(tmp_path):
    store = StateStore(tmp_path)
    env = str(tmp_path / "env.img")
    me = Owner.current()
    store.write(
        InstanceRecord(
            "jct-ab12-x", "/b.sif", [f"{env}:rw"], [], [], {}, me, "k", ["1234abcd-ee"], {"1234abcd-ee": "work/a.ipynb"}
        )
    )
    store.write(InstanceRecord("jct-ab12-y", "/b.sif", [f"{env}:ro"], [], [], {}, Owner(1, 1, "node7"), "k", ["99"]))
    assert holder(store, env) == "the notebook a.ipynb; the kernel 99 (Jupyter server pid 1 on node7)"
    assert holder(store, str(tmp_path / "other.img")) == ANOTHER_PROGRAM
    output = (OUTPUTS / "img_in_use_instance.txt").read_text().replace("/tmp/d17/env.img", env)
    found = diagnose(output, Context(holders=holders(store, [env])))
    assert found.headline == (
        "The env env.img is open for writing by the notebook a.ipynb; the kernel 99 (Jupyter server pid 1 on node7)"
    )


@pytest.mark.integration
def test_an_env_in_use_names_the_notebook_holding_it_at_kernel_start_and_delete(kernel_env):
    """A writable env open in one notebook: a second notebook's kernel of it, and a delete, are
    refused with a first line that names the first notebook, and the server still stops at once."""
    from conftest import Server, free_port

    from kernel_provider.kernel.kernelspecs import KernelspecStore, custom_spec

    # Kernels that do not share an instance: the second one must wait for the first.
    KernelspecStore().write(custom_spec(["python/3.11", "env"], label="env rw", writable=True, share=False))
    server = Server(kernel_env, free_port())

    def session(path: str) -> dict:
        return {"path": path, "name": path, "type": "notebook", "kernel": {"name": "condatainer-env-rw"}}

    try:
        server.start()
        server.request("POST", "/api/sessions", session("work/first.ipynb"))
        status, answer = server.refused("POST", "/api/sessions", session("second.ipynb"))
        deleted = server.refused("DELETE", "/condatainer/api/overlays/env")
        listed = {o["name"]: o for o in server.request("GET", "/condatainer/api/overlays")["overlays"]}
        server.process.terminate()
        server.process.wait(timeout=60)
    finally:
        server.stop()
    first = answer["message"].splitlines()[0]
    assert status == 500 and first.startswith("The kernel 'CondaTainer: env rw' could not start: the env env.img ")
    assert "by the notebook first.ipynb" in first and "shut that kernel down" in first.lower(), first
    assert deleted[0] == 409
    assert (
        deleted[1]["message"] == "env cannot be deleted: it is in use by the notebook first.ipynb; shut that down first"
    )
    assert listed["env"]["in_use"] and listed["env"]["in_use_by"] == "the notebook first.ipynb"
