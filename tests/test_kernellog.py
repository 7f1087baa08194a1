"""Which of a kernel's logs are kept, and for how long (no Apptainer: files only; the real kernels'
logs are read in ``test_launch_progress.py``)."""

from __future__ import annotations

import os

import pytest

from kernel_provider.kernel import kernellog
from kernel_provider.kernel.kernellog import LogSource


@pytest.fixture(autouse=True)
def private_logs(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setattr(kernellog, "_sources", {})
    monkeypatch.setattr(kernellog, "_live", set())
    return tmp_path


def test_a_failed_start_keeps_a_copy_of_the_logs_that_go_with_its_job(private_logs):
    job_output = private_logs / "jcts-k1.out"
    job_output.write_text("FATAL: mount source /nope doesn't exist\n")
    kernellog.track("k1", [LogSource("SLURM job 7 output", job_output, transient=True)])
    with kernellog.open_kernel_log("k1") as out:
        out.write(b"srun: error: task 0 failed\n")
    assert [log["name"] for log in kernellog.read_logs("k1")] == ["kernel output", "SLURM job 7 output"]

    kernellog.forget("k1", keep=True)
    job_output.unlink()  # the job's files go with the job
    kept = kernellog.read_logs("k1")
    assert [(log["name"], log["text"]) for log in kept] == [
        ("kernel output", "srun: error: task 0 failed\n"),
        ("SLURM job 7 output", "FATAL: mount source /nope doesn't exist\n"),
    ]
    assert all(log["path"].startswith(str(kernellog.log_dir())) for log in kept)

    kernellog.forget("k1", keep=False)
    assert kernellog.read_logs("k1") == [] and list(kernellog.log_dir().iterdir()) == []


def test_only_the_newest_failed_kernels_are_kept_and_running_ones_never_pruned(monkeypatch):
    monkeypatch.setattr(kernellog, "KEEP_FAILED", 2)
    kernellog.track("running", [])
    kernellog.open_kernel_log("running").close()
    os.utime(kernellog.kernel_log_path("running"), (1, 1))  # quiet for ages
    for age, kernel_id in enumerate(["old", "middle", "new"]):
        kernellog.open_kernel_log(kernel_id).close()
        os.utime(kernellog.kernel_log_path(kernel_id), (10 + age, 10 + age))
    kernellog.forget("new", keep=True)
    assert sorted(p.name for p in kernellog.log_dir().iterdir()) == [
        "kernel-middle.log",
        "kernel-new.log",
        "kernel-running.log",
    ]
