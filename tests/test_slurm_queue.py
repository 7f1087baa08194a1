"""A pending SLURM job's place in the queue and its reason in words (no cluster: the real one
is in ``test_launch_progress.py``)."""

from __future__ import annotations

import logging

from kernel_provider.kernel import progress
from kernel_provider.kernel.slurm_queue import (
    QueueEntry,
    QueuePlace,
    parse_queue,
    pending_message,
    queue_argv,
    queue_place,
    reason_words,
)

# squeue --priority --states=PD --partition=debug,gpu --sort=-p,i -o %i|%P|%r: a job submitted to
# both partitions (12) is listed once per partition; held and dated jobs keep their places.
QUEUE = """\
10|debug|Resources
11|debug|Dependency
15|gpu|Resources
12|gpu|Priority
13|debug|JobHeldUser
14|debug|Priority
12|debug|Priority
16|gpu|Priority
"""


def test_queue_argv_is_slurms_scheduling_order():
    assert queue_argv("debug") == [
        "squeue",
        "-h",
        "--priority",
        "--states=PD",
        "--partition=debug",
        "--sort=-p,i",
        "-o",
        "%i|%P|%r",
    ]


def test_place_counts_only_jobs_that_can_start_first_in_the_best_partition():
    entries = parse_queue(QUEUE + "garbage line\n")
    assert entries[:2] == [QueueEntry("10", "debug", "Resources"), QueueEntry("11", "debug", "Dependency")]
    assert len(entries) == 8
    assert queue_place(entries, "14") == QueuePlace(2, "debug"), "the dependent and the held job do not count"
    assert queue_place(entries, "12") == QueuePlace(2, "gpu"), "behind 15 on gpu, behind 10 and 14 on debug"
    assert queue_place(entries, "10") == QueuePlace(1, "debug")
    assert queue_place(entries, "99") is None


def test_pending_message_in_words():
    assert pending_message("123", "debug", "Priority", QueuePlace(3, "debug")) == (
        "queued as SLURM job 123 on debug (position 3), waiting for jobs of higher priority"
    )
    assert pending_message("123", "debug,gpu", "Resources", QueuePlace(1, "gpu")).startswith(
        "queued as SLURM job 123 on debug,gpu (position 1 on gpu), waiting for resources (CPUs"
    )
    assert pending_message("123", "debug", "None", None) == "queued as SLURM job 123 on debug"
    assert (
        reason_words("QOSMaxJobsPerUserLimit") == "held back by a limit of its account or QOS (QOSMaxJobsPerUserLimit)"
    )
    assert reason_words("SomethingNew") == "SomethingNew"


def test_the_same_words_again_are_no_event(monkeypatch):
    heard: list[str] = []
    monkeypatch.setattr(progress, "_emitter", lambda data: heard.append(data["message"]))
    steps = progress.LaunchProgress("k-queue", "spec", logging.getLogger("test"))
    for message in ["submitting", "queued (position 2)", "queued (position 2)", "queued (position 1)"]:
        steps.step("queue", message)
    steps.step("instance", "queued (position 1)")
    assert heard == ["submitting", "queued (position 2)", "queued (position 1)", "queued (position 1)"]
