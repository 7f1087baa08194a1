#!/usr/bin/env python3
"""Benchmarks for jupyter-condatainer: our kernels against plain local ipykernels.

Run with the project's virtualenv (Apptainer and the images of
``scripts/build-images.sh`` must exist, as for the integration tests)::

    /var/cache/jupyter-condatainer/venv/bin/python benchmarks/run.py            # all, full repetitions
    /var/cache/jupyter-condatainer/venv/bin/python benchmarks/run.py --quick    # fewer repetitions
    /var/cache/jupyter-condatainer/venv/bin/python benchmarks/run.py --only cold --only restart

One table is printed at the end (PASS/MISS where there is a target). Every figure
stands next to a *baseline measured in the same run* and the ratio ours/baseline. The
two are interleaved (ours, baseline, ours, …; restart and interrupt keep one kernel of
each kind running and alternate), so load from other processes hits both alike; the
1-minute load average before and after each benchmark is printed too, because on a
busy 2-core machine it moves every figure. Times are the median of N runs with
[min–max]: ``--quick`` N=3, the full run N=10 (``-n``); the 20-kernel benchmark runs
once (quick) or twice (full); the listing micro-benchmarks run 20/100 times. Each kernel
benchmark first does one untimed round of each kind (page cache, imports, the
provisioner's per-process caches and its one-time orphan sweep).

What "start" means: from ``AsyncKernelManager.start_kernel()`` until the first
``execute_reply`` (the code ``1``) arrives. The execute request is sent right after
``start_channels()``; ZMQ queues it until the kernel is up. (``wait_for_ready()`` is not
used: it re-sends ``kernel_info`` each second and always waits 0.2 s for IOPub to go
quiet, which would blur sub-second differences.)

Benchmarks (``--only NAME``; numbers work too):

1. ``cold``      Cold start of ``condatainer-bench-cold`` (python/3.11 with
                 ``warm_timeout: 0``; a new instance each time: plan, ``instance start``,
                 python probe, fork server, fork of the kernel; the start script reads
                 ahead what the stack's last fork server read, as after any first start)
                 vs a local ipykernel (the venv's ``python3`` kernelspec). Target: ≤ 2.0×.
2. ``warm``      Start of ``condatainer-python-3.11`` while its stack's instance is warm
                 (the last kernel shut down; its fork server still runs): a fork. Target:
                 ≤ 0.6× a local start.
3. ``shared``    A second kernel joining a running shared instance (``share_instance:
                 true`` kernelspec from ``custom_spec(..., share=True)``; the first kernel
                 keeps running) vs a local start.
4. ``restart``   ``km.restart_kernel()`` of a running kernel until the first
                 ``execute_reply`` of the new one vs a local restart. Target: ≤ 0.5×.
                 A local start is shown as well (for information).
5. ``interrupt`` ``time.sleep(60)`` is running; time from ``km.interrupt_kernel()`` to its
                 ``execute_reply`` with ``KeyboardInterrupt``. Absolute (target ≤ 0.1 s)
                 and vs the local kernel's (signal-mode) interrupt.
6. ``shutdown``  ``km.shutdown_kernel(now=False)`` until no host process mentions the
                 instance name or the connection file any more (polled in /proc every
                 10 ms) vs the same for a local kernel (its connection file).
7. ``wrapper``   The one-shot wrapper kernel users write by hand today: a kernel.json
                 whose argv is ``apptainer exec --overlay python--3.11.sqf:ro
                 ubuntu24--base_image.sif /cnt/python/3.11/bin/python -m
                 ipykernel_launcher -f {connection_file}`` (plus
                 ``APPTAINER_DROP_CAPS=CAP_SYS_RESOURCE`` where root lacks that
                 capability). Cold start and restart of ours vs the wrapper's: the
                 restart row shows what the persistent instance buys.
8. ``listing``   500 generated overlays (empty ``toolN--1.0.sqf`` + a ``.env`` sidecar
                 with ``#WHATIS``): ``overlays.scan`` + ``probes.read_sidecar`` of each vs
                 ``os.listdir`` of the directory (target ≤ 50 ms). Kernelspec sync of 500
                 python overlays (``python--3.0`` … ``python--3.499``: ``scan`` +
                 ``KernelspecStore.sync`` into an empty kernels dir) vs writing 500
                 kernel.json files naively; a re-sync with nothing to change; and
                 ``KernelSpecManager.get_all_specs()`` over those 500 vs reading the 500
                 json files naively.
9. ``concurrent`` 20 kernels started at once (``asyncio.gather`` of start + first
                 ``execute_reply``) of one stack with no instance running (they share one
                 instance and its fork server, the default), on this machine's cores: total
                 wall time, failures (must be 0), peak memory. Memory is sampled every
                 0.2 s as the sum of PSS (``/proc/PID/smaps_rollup``; RSS counts shared
                 pages once per process) of every process below this one plus every
                 process of our instances; the drop of MemAvailable is noted too. Vs 20
                 local ipykernels at once.
10. ``phases``   Where a cold start and a restart spend their time: the provisioner's
                 steps timed in-process (plan, orphan sweep, ``instance start``, python
                 probe, launch → first reply; the provisioner's methods are wrapped for
                 the duration, nothing in ``kernel_provider`` is changed), the memory of
                 each host process behind one kernel, and raw Apptainer calls
                 (``instance start``/``stop``, ``exec true``, python in the container, how
                 long an instance's monitor process stays a zombie) next to the host's.
                 Informational: no target, used to explain misses.

``--subreaper`` runs the suite below a process that reaps orphaned processes at once
(``PR_SET_CHILD_SUBREAPER``). ``apptainer instance stop`` returns only when the instance's
monitor process has been *reaped*, and that process is re-parented to PID 1: systemd
reaps at once, but some VM/container inits take about a second (this project's CI VM
does), which then dominates every shutdown. Compare a run with and without it.

Isolation, as ``tests/conftest.py``'s ``user_layout``: a temporary XDG_STATE_HOME,
JUPYTER_RUNTIME_DIR, JUPYTER_DATA_DIR, JUPYTER_CONFIG_DIR and JUPYTER_PATH, an image
directory of hard links to the cached images in CNT_EXTRA_IMAGE_DIRS, and
XDG_CACHE_HOME=/var/cache/jupyter-condatainer/user-cache (the supplied-ipykernel cache), or
``JCT_USER_CACHE`` as in the tests' ordinary-user pass: run as that user (``runuser``), the
kernels mount the images without root (FUSE), as on a cluster.
Kernelspecs are written with ``KernelspecStore().sync(scan(...))``.

Apptainer's instance registry is isolated too (``APPTAINER_CONFIGDIR`` in the temporary
directory) unless ``--shared-registry`` is given: the provisioner's one-time orphan
sweep stops every running ``jct-*`` instance that has no state file in *its* state
directory, so benchmarks and tests with different temporary state directories would
otherwise stop each other's instances. Everything this script starts is shut down and
every instance it started is stopped at the end, also after an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CACHE = Path(os.environ.get("JCT_CACHE", "/var/cache/jupyter-condatainer"))
IMAGES = Path(os.environ.get("JCT_IMAGES", CACHE / "images"))
BASE_IMAGE = "ubuntu24--base_image.sif"
PYTHON_OVERLAY = "python--3.11.sqf"
NEEDED_IMAGES = (BASE_IMAGE, PYTHON_OVERLAY, "hello--1.0.sqf")

KERNEL = "condatainer-python-3.11"  # warm instances on (the provisioner's default)
COLD_LABEL = "bench-cold"
COLD_KERNEL = f"condatainer-{COLD_LABEL}"  # the same stack with warm_timeout 0: every start is cold
SHARED_LABEL = "bench-shared"
WRAPPER_KERNEL = "bench-apptainer-wrapper"
LOCAL_KERNEL = "python3"
TIMEOUT = 120.0
SUBREAPER_MARK = "CNTBENCH_UNDER_SUBREAPER"
CONCURRENT = 20
# Kernel output (ipykernel's banner, warnings) would bury the table. The local provisioner
# passes these to Popen; ours ignores them, so its kernels' stderr still shows errors.
QUIET = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}


# --- results ------------------------------------------------------------------------------


@dataclass
class Stat:
    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def fmt(self, unit: str) -> str:
        if not self.samples:
            return "-"
        if len(self.samples) == 1:
            return fmt_value(self.samples[0], unit)
        return (
            f"{fmt_value(self.median, unit)} "
            f"[{fmt_value(min(self.samples), unit, bare=True)}–{fmt_value(max(self.samples), unit, bare=True)}]"
        )


def fmt_value(value: float, unit: str, bare: bool = False) -> str:
    if unit == "s":
        text = f"{value:.3f}" if value < 10 else f"{value:.2f}"
    elif unit == "ms":
        text = f"{value * 1000:.2f}" if value < 0.01 else f"{value * 1000:.1f}"
    elif unit == "MiB":
        text = f"{value:.0f}"
    else:
        text = f"{value:g}"
    return text if bare else f"{text} {unit}".strip()


@dataclass
class Row:
    bench: str
    measure: str
    ours: Stat
    unit: str
    baseline_label: str = ""
    baseline: Stat | None = None
    target: str = ""
    passed: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or not self.baseline.samples or not self.ours.samples:
            return None
        base = self.baseline.median
        return self.ours.median / base if base else None


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    loads: list[str] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print(
            f"  {row.measure}: {row.ours.fmt(row.unit)}"
            + (f" vs {row.baseline_label} {row.baseline.fmt(row.unit)}" if row.baseline else "")
            + (f" = {row.ratio:.2f}×" if row.ratio is not None else ""),
            flush=True,
        )
        return row


def ratio_target(row: Row, limit: float) -> Row:
    row.target = f"≤ {limit:g}× baseline"
    row.passed = row.ratio is not None and row.ratio <= limit
    return row


def absolute_target(row: Row, limit: float, text: str) -> Row:
    row.target = text
    row.passed = bool(row.ours.samples) and row.ours.median <= limit
    return row


def print_table(report: Report) -> None:
    headers = [
        "#",
        "measure",
        "ours: median [min–max]",
        "baseline",
        "baseline: median [min–max]",
        "ratio",
        "target",
        "result",
    ]
    lines = []
    for row in report.rows:
        lines.append(
            [
                row.bench,
                row.measure,
                row.ours.fmt(row.unit),
                row.baseline_label,
                row.baseline.fmt(row.unit) if row.baseline else "",
                f"{row.ratio:.2f}×" if row.ratio is not None else "",
                row.target,
                {None: "", True: "PASS", False: "MISS"}[row.passed],
            ]
        )
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(headers)]
    rule = "-+-".join("-" * w for w in widths)
    print()
    print(" | ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print(rule)
    for line in lines:
        print(" | ".join(cell.ljust(w) for cell, w in zip(line, widths)))
    notes = [f"  [{row.bench}] {row.measure}: {row.note}" for row in report.rows if row.note]
    if notes:
        print("\nnotes:")
        print("\n".join(notes))
    if report.loads:
        print(f"\nduration and 1-min load average ({os.cpu_count()} cores) per benchmark: " + "; ".join(report.loads))
    if report.details:
        print()
        print("\n".join(report.details))
    if report.errors:
        print("\nERRORS:")
        print("\n".join(report.errors))


# --- processes ------------------------------------------------------------------------------


def proc_table() -> dict[int, tuple[int, str]]:
    """pid → (ppid, cmdline) for every process readable in /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                ppid = int(handle.read().rsplit(b")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        table[int(entry)] = (ppid, cmdline)
    return table


def closure(table: dict[int, tuple[int, str]], roots: Iterable[int]) -> set[int]:
    """``roots`` and every process below them."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, queue = set(), list(roots)
    while queue:
        pid = queue.pop()
        if pid in found:
            continue
        found.add(pid)
        queue.extend(children.get(pid, []))
    return found


def mentioning(texts: Iterable[str], table: dict[int, tuple[int, str]] | None = None) -> list[int]:
    texts = [t for t in texts if t]
    table = proc_table() if table is None else table
    me = os.getpid()
    return [pid for pid, (_, cmd) in table.items() if pid != me and any(t in cmd for t in texts)]


def memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of a process in KiB (0, 0 when it is gone)."""
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as handle:
            for line in handle:
                if line.startswith(b"Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith(b"Rss:"):
                    rss = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return pss, rss


def mem_available_kib() -> int:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


class MemorySampler:
    """Peak summed PSS/RSS of our kernel processes, sampled every ``interval`` seconds."""

    def __init__(self, instance_names: Callable[[], Iterable[str]], interval: float = 0.2):
        self.instance_names = instance_names
        self.interval = interval
        self.peak_pss = self.peak_rss = 0
        self.peak_processes = 0
        self.available_before = mem_available_kib()
        self.min_available = self.available_before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        table = proc_table()
        try:
            names = list(self.instance_names())
        except RuntimeError:  # the dict changed while we copied it; next sample
            names = []
        roots = [os.getpid(), *mentioning(names, table)] if names else [os.getpid()]
        pids = closure(table, roots) - {os.getpid()}
        pss = rss = 0
        for pid in pids:
            p, r = memory_kib(pid)
            pss += p
            rss += r
        self.peak_pss = max(self.peak_pss, pss)
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_processes = max(self.peak_processes, len(pids))
        self.min_available = min(self.min_available, mem_available_kib())

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    @property
    def available_drop_mib(self) -> float:
        return (self.available_before - self.min_available) / 1024


# --- the isolated layout ---------------------------------------------------------------------


# ``--runtime``: which runtime and mode the CondaTainer kernels use (issue 21). Only the kernel
# benchmarks (cold, restart, interrupt, shutdown, shared, concurrent) follow it; wrapper and
# phases call ``apptainer`` by name.
RUNTIMES = {
    "apptainer": ("apptainer", False),
    "singularityce": ("/opt/singularityce/bin/singularity", False),
    "singularityce-oci": ("/opt/singularityce/bin/singularity", True),
}


def make_layout(root: Path, isolate_registry: bool, runtime: str = "apptainer") -> Path:
    missing = [name for name in NEEDED_IMAGES if not (IMAGES / name).is_file()]
    if missing:
        sys.exit(f"images missing in {IMAGES}: {', '.join(missing)}; run scripts/build-images.sh")
    if not (shutil.which("apptainer") or shutil.which("singularity")):
        sys.exit("Apptainer is not installed: run scripts/setup.sh")
    images = root / "images"
    images.mkdir()
    for name in NEEDED_IMAGES:
        try:
            os.link(IMAGES / name, images / name)
        except OSError:
            shutil.copy(IMAGES / name, images / name)
        if (IMAGES / f"{name}.env").exists():
            shutil.copy(IMAGES / f"{name}.env", images / f"{name}.env")
    for variable, sub in [
        ("XDG_STATE_HOME", "state"),
        ("JUPYTER_RUNTIME_DIR", "runtime"),
        ("JUPYTER_DATA_DIR", "data"),
        ("JUPYTER_CONFIG_DIR", "config"),
    ]:
        (root / sub).mkdir()
        os.environ[variable] = str(root / sub)
    os.environ["JUPYTER_PATH"] = str(root / "data")
    os.environ["XDG_CACHE_HOME"] = os.environ.get("JCT_USER_CACHE", str(CACHE / "user-cache"))
    os.environ["CNT_EXTRA_IMAGE_DIRS"] = str(images)
    binary = shutil.which(RUNTIMES[runtime][0])
    if not binary:
        sys.exit(
            f"{RUNTIMES[runtime][0]} not found: run scripts/setup.sh (SingularityCE: scripts/setup-singularityce.sh)"
        )
    os.environ["CNT_APPTAINER_BIN"] = binary
    if isolate_registry:
        (root / "apptainer").mkdir()
        os.environ["APPTAINER_CONFIGDIR"] = str(root / "apptainer")
    os.chdir(root)
    return images


def write_kernelspecs(root: Path, images: Path, oci: bool = False) -> None:
    from kernel_provider.host.config import CondaTainerConfig
    from kernel_provider.host.process import _cap_bounding_set
    from kernel_provider.kernel.kernelspecs import KernelspecStore, custom_spec
    from kernel_provider.model.command import needs_drop_caps
    from kernel_provider.model.overlays import scan

    config = CondaTainerConfig()
    store = KernelspecStore()
    store.sync(scan(config.image_dirs, config.distro))
    store.write(custom_spec(["python/3.11"], label=SHARED_LABEL, share=True))
    store.write(custom_spec(["python/3.11"], label=COLD_LABEL, extra_config={"warm_timeout": 0}))
    if oci:  # SingularityCE's OCI mode for the benchmarked kernel: its provisioner option
        spec_file = root / "data" / "kernels" / KERNEL / "kernel.json"
        spec = json.loads(spec_file.read_text())
        spec["metadata"]["kernel_provisioner"]["config"]["oci"] = True
        spec_file.write_text(json.dumps(spec, indent=1))
    apptainer = config.require_apptainer()
    wrapper = {
        "argv": [
            apptainer,
            "exec",
            "--overlay",
            f"{images / PYTHON_OVERLAY}:ro",
            str(images / BASE_IMAGE),
            "/cnt/python/3.11/bin/python",
            "-m",
            "ipykernel_launcher",
            "-f",
            "{connection_file}",
        ],
        "display_name": "Python 3.11 (apptainer exec, by hand)",
        "language": "python",
    }
    if needs_drop_caps(os.getuid(), _cap_bounding_set()):
        wrapper["env"] = {"APPTAINER_DROP_CAPS": "CAP_SYS_RESOURCE"}
    directory = root / "data" / "kernels" / WRAPPER_KERNEL
    directory.mkdir(parents=True)
    (directory / "kernel.json").write_text(json.dumps(wrapper, indent=1))


def apptainer_env() -> dict[str, str]:
    from kernel_provider.host.process import apptainer_env as env

    return env()


def registry_instances() -> list[str]:
    """Instance names in the Apptainer registry this process uses."""
    out = subprocess.run(
        ["apptainer", "instance", "list", "--json"], capture_output=True, text=True, env=apptainer_env()
    ).stdout
    try:
        return [entry.get("instance", "") for entry in json.loads(out or "{}").get("instances", [])]
    except ValueError:
        return []


# --- kernels --------------------------------------------------------------------------------


class Kernels:
    """Every kernel manager this run started, so all of them can be shut down at the end."""

    def __init__(self, root: Path):
        import zmq.asyncio

        self.root = root
        self.context = zmq.asyncio.Context()
        self.live: dict[int, tuple[object, object]] = {}
        self.instance_names: set[str] = set()  # every instance any of our kernels used

    def manager(self, name: str):
        """A kernel manager set up as jupyter_server's MultiKernelManager sets one up."""
        import uuid

        from jupyter_client.manager import AsyncKernelManager
        from jupyter_core.paths import jupyter_runtime_dir

        kernel_id = str(uuid.uuid4())
        return AsyncKernelManager(
            kernel_name=name,
            context=self.context,
            connection_file=os.path.join(jupyter_runtime_dir(), f"kernel-{kernel_id}.json"),
        )

    async def start(self, name: str) -> tuple[object, object, float]:
        """Start a kernel and wait for its first execute_reply; (km, client, seconds)."""
        km = self.manager(name)
        started = time.perf_counter()
        self.live[id(km)] = (km, None)
        await km.start_kernel(cwd=str(self.root), **QUIET)
        self.remember_instance(km)
        client = km.client(context=self.context)
        self.live[id(km)] = (km, client)
        client.start_channels()
        await execute(client, "1")
        return km, client, time.perf_counter() - started

    def remember_instance(self, km) -> str:
        instance = getattr(getattr(km, "provisioner", None), "instance", None)
        if instance is not None:
            self.instance_names.add(instance.name)
            return instance.name
        return ""

    async def stop(self, km, client=None, now: bool = False) -> None:
        self.live.pop(id(km), None)
        if client is not None:
            client.stop_channels()
        try:
            if km.has_kernel or getattr(km.provisioner, "instance", None) is not None:
                await km.shutdown_kernel(now=now)
        finally:
            instance = getattr(getattr(km, "provisioner", None), "instance", None)
            if instance is not None:  # a failed shutdown left it: release it ourselves
                await km.provisioner.cleanup(restart=False)

    async def stop_all(self) -> None:
        for km, client in list(self.live.values()):
            try:
                await asyncio.wait_for(self.stop(km, client, now=True), 60)
            except BaseException as err:  # noqa: BLE001 - keep cleaning up
                print(f"cleanup: could not shut down a kernel: {err!r}", file=sys.stderr)


async def execute(client, code: str, timeout: float = TIMEOUT) -> dict:
    """Send ``code`` and return its execute_reply (other shell replies are skipped)."""
    msg_id = client.execute(code)
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no execute_reply to {code!r} within {timeout:.0f} s")
        reply = await client.get_shell_msg(timeout=remaining)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply


async def wait_busy(client, msg_id: str, timeout: float = 10.0) -> None:
    """Wait for the kernel's busy status of ``msg_id`` (IOPub), at most ``timeout``."""
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            msg = await client.get_iopub_msg(timeout=remaining)
        except Exception:  # noqa: BLE001 - queue.Empty
            return
        if msg["parent_header"].get("msg_id") == msg_id:  # busy, execute_input: it is running
            return


async def drain_iopub(client) -> None:
    while True:
        try:
            await client.get_iopub_msg(timeout=0.05)
        except Exception:  # noqa: BLE001 - queue.Empty
            return


def gone_after(texts: list[str], started: float, timeout: float = 60.0) -> float:
    """Seconds from ``started`` until no process mentions any of ``texts``."""
    deadline = time.monotonic() + timeout
    while mentioning(texts):
        if time.monotonic() > deadline:
            raise TimeoutError(f"processes still running {timeout:.0f} s after shutdown: {mentioning(texts)}")
        time.sleep(0.01)
    return time.perf_counter() - started


class Timeline:
    """Record (label, start, end) of provisioner/instance-manager calls while active.

    Wraps methods on the classes for the duration of a ``with`` block (nothing in
    ``kernel_provider`` is edited); a method a later change renamed is skipped.
    """

    def __init__(self, targets: list[tuple[type, str, str]]):
        self.targets = targets
        self.events: list[tuple[str, float, float]] = []
        self._originals: list[tuple[type, str, object]] = []

    def __enter__(self) -> Timeline:
        for owner, attr, label in self.targets:
            original = owner.__dict__.get(attr)
            if original is None:
                continue
            self._originals.append((owner, attr, original))
            setattr(owner, attr, self._wrap(original, label))
        return self

    def __exit__(self, *exc) -> None:
        for owner, attr, original in reversed(self._originals):
            setattr(owner, attr, original)
        self._originals.clear()

    def _wrap(self, original, label):
        events = self.events
        if asyncio.iscoroutinefunction(original):

            async def wrapped(*args, **kwargs):
                t0 = time.perf_counter()
                try:
                    return await original(*args, **kwargs)
                finally:
                    events.append((label, t0, time.perf_counter()))
        else:

            def wrapped(*args, **kwargs):
                t0 = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    events.append((label, t0, time.perf_counter()))

        return wrapped

    def of(self, label: str) -> list[tuple[float, float]]:
        return [(t0, t1) for name, t0, t1 in self.events if name == label]

    def clear(self) -> None:
        self.events.clear()


def provisioner_targets() -> list[tuple[type, str, str]]:
    from kernel_provider.host.instances import InstanceManager
    from kernel_provider.kernel.provisioner import CondaTainerProvisioner as P
    from kernel_provider.kernel.provisioner_base import CondaTainerProvisionerBase as B

    M = InstanceManager
    return [
        (P, "pre_launch", "pre_launch (all)"),
        (B, "_plan", "plan (scan + unsquashfs probes)"),
        (P, "launch_kernel", "launch_kernel (fork, or spawn exec)"),
        (M, "zygote", "fork server (started for a new instance)"),
        (B, "cleanup", "provisioner cleanup"),
        (M, "sweep_orphans_once", "orphan sweep (first kernel only)"),
        (M, "acquire", "acquire (lock + instance start)"),
        (M, "_start", "apptainer instance start"),
        (M, "probe_python", "python probe (exec, cached per instance)"),
        (M, "_finish_stop", "apptainer instance stop"),
    ]


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    points = sorted([(t0, 1) for t0, _ in intervals] + [(t1, -1) for _, t1 in intervals])
    level = peak = 0
    for _, step in points:
        level += step
        peak = max(peak, level)
    return peak


# --- benchmarks -----------------------------------------------------------------------------


class Bench:
    def __init__(self, kernels: Kernels, report: Report, n: int, quick: bool, root: Path):
        self.k, self.report, self.n, self.quick, self.root = kernels, report, n, quick, root

    async def start_stop(self, name: str) -> float:
        km, client, seconds = await self.k.start(name)
        await self.k.stop(km, client)
        return seconds

    async def warm_up(self, *names: str) -> None:
        for name in names:
            await self.start_stop(name)

    # 1
    async def cold(self) -> None:
        await self.warm_up(COLD_KERNEL, LOCAL_KERNEL)
        ours, local = [], []
        for _ in range(self.n):
            ours.append(await self.start_stop(COLD_KERNEL))
            local.append(await self.start_stop(LOCAL_KERNEL))
        self.report.add(
            ratio_target(
                Row("1", "cold start → first execute_reply", Stat(ours), "s", "local ipykernel start", Stat(local)), 2.0
            )
        )

    # 2
    async def warm(self) -> None:
        await self.warm_up(KERNEL, LOCAL_KERNEL)  # leaves the stack's instance warm
        ours, local = [], []
        for _ in range(self.n):
            km, client, seconds = await self.k.start(KERNEL)
            if not km.provisioner.forked:
                raise AssertionError("a start on a warm instance was not a fork")
            ours.append(seconds)
            await self.k.stop(km, client)
            local.append(await self.start_stop(LOCAL_KERNEL))
        self.report.add(
            ratio_target(
                Row(
                    "2",
                    "warm start (fork) → first execute_reply",
                    Stat(ours),
                    "s",
                    "local ipykernel start",
                    Stat(local),
                ),
                0.6,
            )
        )

    # 3
    async def shared(self) -> None:
        await self.warm_up(LOCAL_KERNEL)
        name = f"condatainer-{SHARED_LABEL}"
        first, first_client, _ = await self.k.start(name)
        instance = self.k.remember_instance(first)
        try:
            ours, local = [], []
            await self.start_stop(name)  # warm-up on the shared instance
            for _ in range(self.n):
                km, client, seconds = await self.k.start(name)
                if self.k.remember_instance(km) != instance:
                    raise AssertionError("the second kernel did not join the shared instance")
                ours.append(seconds)
                await self.k.stop(km, client)
                local.append(await self.start_stop(LOCAL_KERNEL))
        finally:
            await self.k.stop(first, first_client)
        self.report.add(
            Row(
                "3",
                "2nd kernel on a shared instance → first reply",
                Stat(ours),
                "s",
                "local ipykernel start",
                Stat(local),
            )
        )

    async def interleaved(self, names: list[str], count: int, action, warm: int = 1) -> list[list[float]]:
        """Keep one running kernel per name; ``count`` rounds of ``action`` on each in turn.

        ``action(km, client)`` returns seconds. Interleaving puts both kinds under the
        same background load. The first ``warm`` rounds are not counted.
        """
        running = []
        try:
            for name in names:
                km, client, _ = await self.k.start(name)
                running.append((km, client, self.k.remember_instance(km)))
            times: list[list[float]] = [[] for _ in names]
            for round_ in range(warm + count):
                for index, (km, client, instance) in enumerate(running):
                    seconds = await action(km, client)
                    if instance and self.k.remember_instance(km) != instance:
                        raise AssertionError("restart did not reuse the instance")
                    if round_ >= warm:
                        times[index].append(seconds)
            return times
        finally:
            for km, client, _ in running:
                await self.k.stop(km, client)

    @staticmethod
    async def restart_once(km, client) -> float:
        """One restart until the new kernel's first execute_reply."""
        started = time.perf_counter()
        await km.restart_kernel(now=False)
        await execute(client, "1")
        return time.perf_counter() - started

    @staticmethod
    async def interrupt_once(km, client) -> float:
        """Interrupt a running ``time.sleep(60)``; seconds until its KeyboardInterrupt reply."""
        await drain_iopub(client)
        msg_id = client.execute("import time; time.sleep(60)")
        await wait_busy(client, msg_id)
        await asyncio.sleep(0.3)  # inside time.sleep by now
        started = time.perf_counter()
        await km.interrupt_kernel()
        while True:
            reply = await client.get_shell_msg(timeout=30)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        seconds = time.perf_counter() - started
        content = reply["content"]
        if content.get("status") != "error" or content.get("ename") != "KeyboardInterrupt":
            raise AssertionError(f"interrupt did not raise KeyboardInterrupt: {content}")
        return seconds

    # 4
    async def restart(self) -> None:
        local_start: list[float] = []
        warm = 1

        async def action(km, client) -> float:
            nonlocal warm
            seconds = await self.restart_once(km, client)
            if km.kernel_name == LOCAL_KERNEL:  # one local start per round, too
                start = await self.start_stop(LOCAL_KERNEL)
                if warm:
                    warm = 0
                else:
                    local_start.append(start)
            return seconds

        ours, local_restart = await self.interleaved([KERNEL, LOCAL_KERNEL], self.n, action)
        self.report.add(
            ratio_target(
                Row("4", "restart → first execute_reply", Stat(ours), "s", "local restart", Stat(local_restart)),
                0.5,
            )
        )
        self.report.add(
            Row("4", "restart (info: vs a local start)", Stat(ours), "s", "local ipykernel start", Stat(local_start))
        )

    # 5
    async def interrupt(self) -> None:
        ours, local = await self.interleaved([KERNEL, LOCAL_KERNEL], self.n, self.interrupt_once)
        self.report.add(
            absolute_target(
                Row(
                    "5", "interrupt → KeyboardInterrupt reply", Stat(ours), "s", "local ipykernel (signal)", Stat(local)
                ),
                0.1,
                "≤ 0.1 s",
            )
        )

    async def shutdown_once(self, name: str) -> tuple[float, float]:
        """(seconds until shutdown_kernel returned, until no process was left)."""
        km, client, _ = await self.k.start(name)
        instance = self.k.remember_instance(km)
        texts = [km.connection_file] + ([instance] if instance else [])
        client.stop_channels()
        started = time.perf_counter()
        await self.k.stop(km)
        returned = time.perf_counter() - started
        return returned, gone_after(texts, started)

    # 6
    async def shutdown(self) -> None:
        await self.warm_up(COLD_KERNEL, LOCAL_KERNEL)
        ours, local, ours_return, local_return = [], [], [], []
        for _ in range(self.n):
            returned, gone = await self.shutdown_once(COLD_KERNEL)
            ours.append(gone)
            ours_return.append(returned)
            returned, gone = await self.shutdown_once(LOCAL_KERNEL)
            local.append(gone)
            local_return.append(returned)
        self.report.add(
            Row(
                "6",
                "shutdown → no process left",
                Stat(ours),
                "s",
                "local ipykernel shutdown",
                Stat(local),
                note="the instance stops in the background (warm_timeout 0), after the client's answer",
            )
        )
        self.report.add(
            absolute_target(
                Row(
                    "6",
                    "shutdown as seen by the client",
                    Stat(ours_return),
                    "s",
                    "local ipykernel shutdown_kernel()",
                    Stat(local_return),
                ),
                0.25,
                "≤ 0.25 s",
            )
        )

    # 7
    async def wrapper(self) -> None:
        await self.warm_up(COLD_KERNEL, WRAPPER_KERNEL)
        ours, wrapped = [], []
        for _ in range(self.n):
            ours.append(await self.start_stop(COLD_KERNEL))
            wrapped.append(await self.start_stop(WRAPPER_KERNEL))
        ours_restart, wrapped_restart = await self.interleaved([KERNEL, WRAPPER_KERNEL], self.n, self.restart_once)
        self.report.add(
            Row(
                "7",
                "cold start vs hand-made apptainer-exec kernel",
                Stat(ours),
                "s",
                "one-shot wrapper start",
                Stat(wrapped),
            )
        )
        self.report.add(
            Row(
                "7",
                "restart vs hand-made apptainer-exec kernel",
                Stat(ours_restart),
                "s",
                "one-shot wrapper restart",
                Stat(wrapped_restart),
            )
        )

    # 8
    async def listing(self) -> None:
        await asyncio.to_thread(self._listing)

    def _listing(self) -> None:
        from jupyter_client.kernelspec import KernelSpecManager

        from kernel_provider.host.probes import read_sidecar
        from kernel_provider.kernel.kernelspecs import KernelspecStore, StackSpec
        from kernel_provider.model.overlays import scan

        reps = 20 if self.quick else 100
        many = self.root / "many-overlays"
        many.mkdir()
        for i in range(500):
            (many / f"tool{i}--1.0.sqf").touch()
            (many / f"tool{i}--1.0.sqf.env").write_text(
                f"#WHATIS:tool {i} 1.0 - a generated overlay\nTOOL{i}_HOME=$app_root\n#ENVNOTE:TOOL{i}_HOME=its root\n"
            )

        def listing() -> int:
            catalog = scan([str(many)], "ubuntu24")
            overlays = {o.path: o for o in catalog.by_name.values() if o.kind == "sqf"}
            return sum(1 for o in overlays.values() if read_sidecar(o).whatis)

        count = listing()
        if count != 500:
            raise AssertionError(f"listing found {count} overlays with #WHATIS, expected 500")
        cpu: list[float] = []
        ours = timed(listing, reps, cpu)
        base = timed(lambda: os.listdir(many), reps)
        self.report.add(
            absolute_target(
                Row(
                    "8",
                    "list 500 overlays (scan + read_sidecar)",
                    Stat(ours),
                    "ms",
                    "os.listdir",
                    Stat(base),
                    note=f"CPU time of this process {Stat(cpu).fmt('ms')} "
                    "(wall time grows with the machine's load, CPU time does not)",
                ),
                0.050,
                "≤ 50 ms",
            )
        )

        pythons = self.root / "python-overlays"
        pythons.mkdir()
        for i in range(500):
            (pythons / f"python--3.{i}.sqf").touch()
        (pythons / BASE_IMAGE).touch()
        kernels_root = self.root / "kernels-sync"
        kernels_root.mkdir()
        counter = iter(range(10**9))

        def sync_fresh() -> None:
            store = KernelspecStore(kernels_root / f"sync-{next(counter)}")
            result = store.sync(scan([str(pythons)], "ubuntu24"))
            assert len(result.written) == 500, len(result.written)

        example = StackSpec(label="python/3.0", overlays=("python/3.0",)).to_kernel_json()

        def naive_write() -> None:
            directory = kernels_root / f"naive-{next(counter)}"
            for i in range(500):
                spec_dir = directory / f"condatainer-python-3.{i}"
                spec_dir.mkdir(parents=True)
                with open(spec_dir / "kernel.json", "w") as handle:
                    json.dump(example, handle)

        sync_reps = 5 if self.quick else 20
        fresh = timed(sync_fresh, sync_reps)
        naive = timed(naive_write, sync_reps)
        self.report.add(
            Row(
                "8",
                "kernelspec sync, 500 python overlays (new)",
                Stat(fresh),
                "ms",
                "write 500 kernel.json",
                Stat(naive),
            )
        )

        steady = kernels_root / "steady"
        KernelspecStore(steady).sync(scan([str(pythons)], "ubuntu24"))

        def resync() -> None:
            result = KernelspecStore(steady).sync(scan([str(pythons)], "ubuntu24"))
            assert not result.written and not result.removed

        def naive_read(directory: Path = steady) -> int:
            found = 0
            for entry in os.scandir(directory):
                with open(os.path.join(entry.path, "kernel.json")) as handle:
                    found += bool(json.load(handle))
            return found

        self.report.add(
            Row(
                "8",
                "kernelspec re-sync, 500 unchanged",
                Stat(timed(resync, sync_reps)),
                "ms",
                "read 500 kernel.json",
                Stat(timed(naive_read, sync_reps)),
            )
        )

        def get_all_specs() -> int:
            return len(KernelSpecManager(kernel_dirs=[str(steady)], ensure_native_kernel=False).get_all_specs())

        self.report.add(
            Row(
                "8",
                "KernelSpecManager.get_all_specs, 500 specs",
                Stat(timed(get_all_specs, sync_reps)),
                "ms",
                "read 500 kernel.json",
                Stat(timed(naive_read, sync_reps)),
                note="what every GET /api/kernelspecs costs (jupyter_client, not ours)",
            )
        )

    # 9
    async def concurrent(self) -> None:
        from kernel_provider.host.instances import InstanceManager

        reps = 1 if self.quick else 2
        await self.warm_up(COLD_KERNEL, LOCAL_KERNEL)

        def our_instances() -> list[str]:
            names = []
            for manager in list(InstanceManager._managers.values()):
                names += list(manager.instances)
            return names

        results = {COLD_KERNEL: [], LOCAL_KERNEL: []}
        starts, waits, probes, overlaps = [], [], [], []
        for _ in range(reps):
            for name in (COLD_KERNEL, LOCAL_KERNEL):
                with Timeline(provisioner_targets()) as timeline:
                    results[name].append(await self.concurrent_once(name, our_instances))
                if name == COLD_KERNEL:
                    instance_starts = timeline.of("apptainer instance start")
                    acquires = timeline.of("acquire (lock + instance start)")
                    starts += [t1 - t0 for t0, t1 in instance_starts]
                    waits.append(sum(a1 - a0 for a0, a1 in acquires) - sum(t1 - t0 for t0, t1 in instance_starts))
                    probes += [t1 - t0 for t0, t1 in timeline.of("python probe (exec, cached per instance)")]
                    overlaps.append(max_overlap(instance_starts))
        ours, local = results[COLD_KERNEL], results[LOCAL_KERNEL]
        self.report.details.append(
            f"[8] {CONCURRENT} at once, ours: each 'apptainer instance start' {Stat(starts).fmt('s')}, "
            f"at most {max(overlaps, default=0)} running at the same time; time kernels spent waiting for "
            f"InstanceManager's lock (acquire − start, summed over kernels) {Stat(waits).fmt('s')}; "
            f"python probes {Stat(probes).fmt('s')}"
        )
        print(self.report.details[-1], flush=True)

        def stat(runs, index):
            return Stat([run[index] for run in runs])

        failures = sum(run[1] for run in ours)
        self.report.add(
            ratio_target(
                Row(
                    "9",
                    f"{CONCURRENT} kernels at once: total wall time",
                    stat(ours, 0),
                    "s",
                    f"{CONCURRENT} local ipykernels",
                    stat(local, 0),
                    note=f"slowest single kernel {stat(ours, 4).fmt('s')} (local {stat(local, 4).fmt('s')}); "
                    f"{os.cpu_count()} cores",
                ),
                1.2,
            )
        )
        row = self.report.add(
            Row(
                "9",
                f"{CONCURRENT} kernels at once: failures",
                stat(ours, 1),
                "",
                f"{CONCURRENT} local ipykernels",
                stat(local, 1),
                target="0 failures",
            )
        )
        row.passed = failures == 0
        self.report.add(
            ratio_target(
                Row(
                    "9",
                    f"{CONCURRENT} kernels at once: peak memory (sum of PSS)",
                    stat(ours, 2),
                    "MiB",
                    f"{CONCURRENT} local ipykernels",
                    stat(local, 2),
                    note=f"peak sum of RSS {stat(ours, 5).fmt('MiB')} (local {stat(local, 5).fmt('MiB')}); "
                    f"peak MemAvailable drop {stat(ours, 3).fmt('MiB')} "
                    f"(local {stat(local, 3).fmt('MiB')}, includes other users of the machine)",
                ),
                1.0,
            )
        )
        for run in ours + local:
            for error in run[6]:
                self.report.errors.append(f"[8] {error}")

    async def concurrent_once(self, name: str, instance_names) -> tuple:
        async def one():
            started = time.perf_counter()
            km, client, _ = await self.k.start(name)
            return km, client, time.perf_counter() - started

        with MemorySampler(instance_names) as sampler:
            started = time.perf_counter()
            outcomes = await asyncio.gather(*(one() for _ in range(CONCURRENT)), return_exceptions=True)
            total = time.perf_counter() - started
            sampler.sample()
        ok = [o for o in outcomes if not isinstance(o, BaseException)]
        errors = [f"{name}: {o!r}" for o in outcomes if isinstance(o, BaseException)]
        await asyncio.gather(*(self.k.stop(km, client) for km, client, _ in ok), return_exceptions=True)
        # Kernels that failed half-way are still in self.k.live: stop them too.
        await self.k.stop_all()
        slowest = max((seconds for _, _, seconds in ok), default=0.0)
        return (
            total,
            len(errors),
            sampler.peak_pss / 1024,
            sampler.available_drop_mib,
            slowest,
            sampler.peak_rss / 1024,
            errors,
        )

    # 10
    async def phases(self) -> None:
        phases: dict[str, list[float]] = {}
        restart_phases: dict[str, list[float]] = {}

        def collect(into, events, extra):
            for label, t0, t1 in events:
                into.setdefault(label, []).append(t1 - t0)
            for label, value in extra.items():
                into.setdefault(label, []).append(value)

        def end_of(events, label, default):
            return next((t1 for name, _, t1 in events if name.startswith(label)), default)

        memory_lines: list[str] = []
        with Timeline(provisioner_targets()) as timeline:
            await self.start_stop(COLD_KERNEL)  # the first one pays the sweep and cold caches
            first = [(label, t1 - t0) for label, t0, t1 in timeline.events]
            for i in range(self.n):
                timeline.clear()
                km = self.k.manager(COLD_KERNEL)
                self.k.live[id(km)] = (km, None)
                t_begin = time.perf_counter()
                await km.start_kernel(cwd=str(self.root), **QUIET)
                t_started = time.perf_counter()
                self.k.remember_instance(km)
                client = km.client(context=self.k.context)
                self.k.live[id(km)] = (km, client)
                client.start_channels()
                await execute(client, "1")
                t_end = time.perf_counter()
                events = list(timeline.events)
                collect(
                    phases,
                    events,
                    {
                        "start_kernel() returned": t_started - t_begin,
                        "launched (fork or exec) → first execute_reply": t_end
                        - end_of(events, "launch_kernel", t_started),
                        "total": t_end - t_begin,
                    },
                )
                if i == 0:
                    memory_lines = self.memory_breakdown(km)
                    local, local_client, _ = await self.k.start(LOCAL_KERNEL)
                    local_process = getattr(local.provisioner, "process", None)
                    if local_process is not None:
                        pss, rss = memory_kib(local_process.pid)
                        memory_lines.append(
                            f"      a local ipykernel for comparison: PSS {pss / 1024:.1f} MiB, "
                            f"RSS {rss / 1024:.1f} MiB"
                        )
                    await self.k.stop(local, local_client)
                # restart: the old kernel's shutdown, then a start without plan/instance/probe
                timeline.clear()
                t_begin = time.perf_counter()
                await km.restart_kernel(now=False)
                await execute(client, "1")
                t_end = time.perf_counter()
                events = [e for e in timeline.events if e[0] != "pre_launch (all)"]
                collect(
                    restart_phases,
                    events,
                    {
                        "old kernel gone (shutdown_request → cleanup done)": end_of(
                            events, "provisioner cleanup", t_begin
                        )
                        - t_begin,
                        "launched (fork or exec) → first execute_reply": t_end
                        - end_of(events, "launch_kernel", t_begin),
                        "total": t_end - t_begin,
                    },
                )
                timeline.clear()
                client.stop_channels()
                self.k.live.pop(id(km), None)
                t0 = time.perf_counter()
                await km.shutdown_kernel(now=False)
                phases.setdefault("shutdown_kernel(now=False) (info)", []).append(time.perf_counter() - t0)
                for a, b in timeline.of("apptainer instance stop"):
                    phases.setdefault("  of which apptainer instance stop", []).append(b - a)

        lines = [f"[10] phases of a cold start of {COLD_KERNEL} (median [min–max] of {self.n}; in-process timings):"]
        lines += [f"      {label:<62} {Stat(v).fmt('s')}" for label, v in phases.items()]
        lines.append("    first start of this process: " + ", ".join(f"{phase} {v:.3f} s" for phase, v in first))
        lines.append("[10] phases of a restart:")
        lines += [f"      {label:<62} {Stat(v).fmt('s')}" for label, v in restart_phases.items()]
        lines += memory_lines
        lines += await asyncio.to_thread(self.raw_apptainer)
        self.report.details += lines
        print("\n".join(lines), flush=True)
        fixed = [
            a + b
            for a, b in zip(
                phases.get("apptainer instance start", []), phases.get("python probe (exec, cached per instance)", [])
            )
        ]
        self.report.add(
            Row(
                "10",
                "cold start: instance start + probe, part of total",
                Stat(fixed),
                "s",
                "cold start total",
                Stat(phases["total"]),
            )
        )

    def memory_breakdown(self, km) -> list[str]:
        """PSS/RSS of each host process behind one of our kernels."""
        table = proc_table()
        instance = self.k.remember_instance(km)
        process = getattr(km.provisioner, "process", None)
        roots = mentioning([instance], table) + ([process.pid] if process else [])
        lines = [f"[9] host processes behind one kernel (instance {instance}):"]
        total_pss = total_rss = 0
        for pid in sorted(closure(table, roots)):
            pss, rss = memory_kib(pid)
            total_pss += pss
            total_rss += rss
            lines.append(f"      {pid:>7} PSS {pss / 1024:6.1f} MiB  RSS {rss / 1024:6.1f} MiB  {table[pid][1][:90]}")
        lines.append(f"      total PSS {total_pss / 1024:.1f} MiB, RSS {total_rss / 1024:.1f} MiB")
        return lines

    def raw_apptainer(self) -> list[str]:
        """Raw Apptainer and python timings, no provisioner involved."""
        images = Path(os.environ["CNT_EXTRA_IMAGE_DIRS"])
        env = apptainer_env()
        venv_python = sys.executable
        results: dict[str, list[float]] = {}

        def run(label, argv):
            t0 = time.perf_counter()
            done = subprocess.run(argv, env=env, capture_output=True, text=True)
            results.setdefault(label, []).append(time.perf_counter() - t0)
            if done.returncode != 0:
                raise RuntimeError(f"{argv}: {done.stderr[-500:]}")

        def start(name):
            self.k.instance_names.add(name)
            subprocess.run(
                ["apptainer", "instance", "start", *overlay, str(images / BASE_IMAGE), name],
                env=env,
                capture_output=True,
                check=True,
            )

        overlay = ["--overlay", f"{images / PYTHON_OVERLAY}:ro"]
        py = "/cnt/python/3.11/bin/python"
        imports = "import ipykernel.kernelapp"
        for i in range(self.n):
            name = f"cntbench-raw-{os.getpid()}-{i}"
            self.k.instance_names.add(name)
            run(
                "apptainer instance start (sif + python sqf)",
                ["apptainer", "instance", "start", *overlay, "--cleanenv", str(images / BASE_IMAGE), name],
            )
            try:
                run("apptainer instance list --json", ["apptainer", "instance", "list", "--json"])
                run("apptainer exec instance:// true", ["apptainer", "exec", f"instance://{name}", "true"])
                run("exec python -c pass (in instance)", ["apptainer", "exec", f"instance://{name}", py, "-c", "pass"])
                run(
                    f"exec python -c '{imports}' (1st in instance)",
                    ["apptainer", "exec", f"instance://{name}", py, "-c", imports],
                )
                run(
                    f"exec python -c '{imports}' (2nd in instance)",
                    ["apptainer", "exec", f"instance://{name}", py, "-c", imports],
                )
            finally:
                run("apptainer instance stop", ["apptainer", "instance", "stop", name])
            start(f"{name}-f")
            run("apptainer instance stop --force (SIGKILL)", ["apptainer", "instance", "stop", "--force", f"{name}-f"])
            start(f"{name}-z")
            for label, value in self.instance_exit(f"{name}-z").items():
                results.setdefault(label, []).append(value)
            run(
                "one-shot apptainer exec (sif + sqf) true",
                ["apptainer", "exec", *overlay, str(images / BASE_IMAGE), "true"],
            )
            run("host: venv python -c pass", [venv_python, "-c", "pass"])
            run(f"host: venv python -c '{imports}'", [venv_python, "-c", imports])
        with open("/proc/1/cmdline", "rb") as handle:
            init = handle.read().split(b"\0")[0].decode(errors="replace")
        lines = ["[9] raw commands (no provisioner):"]
        lines += [f"      {label:<62} {Stat(v).fmt('s')}" for label, v in results.items()]
        lines.append(
            f"      (the instance's monitor process is reaped by its parent: PID 1 = {init}"
            f"{', or this run’s subreaper' if os.environ.get(SUBREAPER_MARK) else ''})"
        )
        return lines

    def instance_exit(self, name: str) -> dict[str, float]:
        """SIGTERM to an instance's init: when is its monitor a zombie, when reaped?"""
        listing = json.loads(
            subprocess.run(
                ["apptainer", "instance", "list", "--json", name],
                env=apptainer_env(),
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        pid = listing["instances"][0]["pid"]
        with open(f"/proc/{pid}/stat") as handle:
            monitor = int(handle.read().rsplit(")", 1)[1].split()[1])
        started = time.perf_counter()
        os.kill(pid, 15)
        zombie = None
        while True:
            try:
                with open(f"/proc/{monitor}/stat") as handle:
                    state = handle.read().rsplit(")", 1)[1].split()[0]
            except FileNotFoundError:
                break
            if state == "Z" and zombie is None:
                zombie = time.perf_counter() - started
            if time.perf_counter() - started > 30:
                break
            time.sleep(0.002)
        gone = time.perf_counter() - started
        return {
            "SIGTERM to instance init → its monitor exited (zombie)": zombie if zombie is not None else gone,
            "SIGTERM to instance init → monitor reaped (what stop waits for)": gone,
        }


def timed(function: Callable[[], object], reps: int, cpu: list[float] | None = None) -> list[float]:
    """Wall-clock seconds of ``reps`` calls (and their CPU seconds into ``cpu``)."""
    samples = []
    for _ in range(reps):
        c0, t0 = time.process_time(), time.perf_counter()
        function()
        samples.append(time.perf_counter() - t0)
        if cpu is not None:
            cpu.append(time.process_time() - c0)
    return samples


BENCHMARKS = [
    "cold",
    "warm",
    "shared",
    "restart",
    "interrupt",
    "shutdown",
    "wrapper",
    "listing",
    "concurrent",
    "phases",
]

# What runs only on instances: SingularityCE's OCI mode has none.
NEEDS_INSTANCES = ("warm", "shared")


def pick(only: list[str] | None) -> list[str]:
    if not only:
        return list(BENCHMARKS)
    chosen = []
    for item in only:
        for part in item.split(","):
            part = part.strip()
            if part.isdigit() and 1 <= int(part) <= len(BENCHMARKS):
                part = BENCHMARKS[int(part) - 1]
            if part not in BENCHMARKS:
                sys.exit(f"unknown benchmark {part!r}; choose from {', '.join(BENCHMARKS)} (or 1-{len(BENCHMARKS)})")
            chosen.append(part)
    return [b for b in BENCHMARKS if b in chosen]


async def run_all(args, root: Path, report: Report, kernels: Kernels) -> None:
    from kernel_provider.host.config import CondaTainerConfig
    from kernel_provider.host.instances import InstanceManager

    bench = Bench(kernels, report, 3 if args.quick else args.n, args.quick, root)
    manager = InstanceManager.for_config(CondaTainerConfig())
    manager.serve()  # as in jupyter_server: warm instances, stops in the background
    try:
        for name in pick(args.only):
            number = BENCHMARKS.index(name) + 1
            print(f"\n== {number}. {name}", flush=True)
            if RUNTIMES[args.runtime][1] and name in NEEDS_INSTANCES:
                print("  not measured: OCI mode has no instances (no fork server, nothing warm or shared)", flush=True)
                continue
            t0 = time.perf_counter()
            load_before = os.getloadavg()[0]
            try:
                await getattr(bench, name)()
            except Exception as err:  # noqa: BLE001 - report, clean up, go on with the next
                report.errors.append(f"[{number}] {name}: {err!r}\n{traceback.format_exc()}")
                print(f"  FAILED: {err!r}", flush=True)
                await kernels.stop_all()
            elapsed = time.perf_counter() - t0
            report.loads.append(f"{number}. {name} {elapsed:.0f} s, load {load_before:.1f}→{os.getloadavg()[0]:.1f}")
            print(f"  ({report.loads[-1]})", flush=True)
    finally:
        await kernels.stop_all()
        kernels.instance_names.update(manager.warm)
        await manager.close()
        await stop_instances(kernels)
        kernels.context.destroy(linger=0)


async def stop_instances(kernels: Kernels) -> None:
    """Stop what the provisioner still holds, then any of our instances still registered."""
    from kernel_provider.host.instances import InstanceManager

    for manager in list(InstanceManager._managers.values()):
        for name in list(manager.instances):
            kernels.instance_names.add(name)
            try:
                await manager.stop_by_name(name)
            except Exception as err:  # noqa: BLE001
                print(f"cleanup: {name}: {err!r}", file=sys.stderr)


def final_cleanup(isolated: bool, known: set[str]) -> list[str]:
    """Stop every instance this run started that is still running; return what was left."""
    running = registry_instances()
    # With the isolated registry every instance in it is ours; otherwise only the names we saw.
    leftovers = [name for name in running if isolated or name in known]
    for name in leftovers:
        subprocess.run(["apptainer", "instance", "stop", name], capture_output=True, env=apptainer_env())
    return leftovers


def run_under_subreaper() -> int:
    """Run this script again as the child of a process that reaps orphans at once.

    An instance's monitor process is re-parented to PID 1 when it is done and stays a
    zombie until PID 1 reaps it; ``apptainer instance stop`` waits for that. systemd reaps
    at once; some container/VM inits (this project's CI VM) only about once a second.
    ``--subreaper`` makes this process the orphans' parent (PR_SET_CHILD_SUBREAPER) and
    reaps them immediately, to show what a host with a prompt init would measure.
    """
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        sys.exit(f"prctl(PR_SET_CHILD_SUBREAPER) failed: errno {ctypes.get_errno()}")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the child (same process group)
    child = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env={**os.environ, SUBREAPER_MARK: "1"}
    )
    signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 1
        except InterruptedError:
            continue
        if pid == child.pid:
            child.returncode = os.waitstatus_to_exitcode(status)
            return child.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N=3 (and fewer micro-benchmark repetitions)")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help=f"run only these ({', '.join(BENCHMARKS)}, or 1-{len(BENCHMARKS)}); repeatable",
    )
    parser.add_argument("-n", type=int, default=10, help="repetitions of the full run (default 10)")
    parser.add_argument(
        "--shared-registry",
        action="store_true",
        help="use the user's Apptainer instance registry instead of a private APPTAINER_CONFIGDIR",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--runtime",
        choices=list(RUNTIMES),
        default="apptainer",
        help="runtime and mode of the CondaTainer kernels (SingularityCE from scripts/setup-singularityce.sh)",
    )
    parser.add_argument(
        "--subreaper",
        action="store_true",
        help="reap finished instance monitors at once, as systemd would (see run_under_subreaper)",
    )
    args = parser.parse_args()
    if args.subreaper and not os.environ.get(SUBREAPER_MARK):
        sys.exit(run_under_subreaper())

    pick(args.only)  # an unknown name fails here, before anything is set up
    root = Path(tempfile.mkdtemp(prefix="cntbench-", dir="/tmp"))
    images = make_layout(root, isolate_registry=not args.shared_registry, runtime=args.runtime)
    write_kernelspecs(root, images, oci=RUNTIMES[args.runtime][1])

    import ipykernel
    import jupyter_client
    from jupyter_client.kernelspec import KernelSpecManager

    local_argv = KernelSpecManager().get_kernel_spec(LOCAL_KERNEL).argv
    version = subprocess.run([os.environ["CNT_APPTAINER_BIN"], "--version"], capture_output=True, text=True).stdout
    version = f"{version.strip()}{' (OCI mode)' if RUNTIMES[args.runtime][1] else ''}"
    print(
        f"jupyter-condatainer benchmarks ({'quick' if args.quick else 'full'}), {platform.node()}: "
        f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}, {version}, "
        f"jupyter_client {jupyter_client.__version__}, host ipykernel {ipykernel.__version__}"
    )
    print(
        f"layout {root}; local kernel: {LOCAL_KERNEL} {local_argv[0]} → {sys.executable}; "
        f"Apptainer registry: {'private' if not args.shared_registry else 'shared with the user'}; "
        f"orphans reaped by {'this run (--subreaper)' if os.environ.get(SUBREAPER_MARK) else 'PID 1'}",
        flush=True,
    )

    report = Report()
    kernels = Kernels(root)
    started = time.perf_counter()
    try:
        asyncio.run(run_all(args, root, report, kernels))
    except KeyboardInterrupt:
        report.errors.append("interrupted")
    finally:
        from kernel_provider.host.instances import InstanceManager

        known = set(kernels.instance_names)
        for manager in InstanceManager._managers.values():
            known.update(manager.instances)
        leftovers = final_cleanup(not args.shared_registry, known)
        left = mentioning([str(root)])
        if leftovers:
            report.errors.append(f"instances still running at the end were stopped: {', '.join(leftovers)}")
        if left:
            report.errors.append(f"processes still mentioning {root}: {left}")
        print_table(report)
        print(f"\ntotal {time.perf_counter() - started:.0f} s; load at the end {os.getloadavg()[0]:.2f}")
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    sys.exit(1 if report.errors or any(r.passed is False and r.target == "0 failures" for r in report.rows) else 0)


if __name__ == "__main__":
    main()
