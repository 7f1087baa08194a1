#!/usr/bin/env python3
"""What-if experiments for the changes suggested by ``run.py``'s results.

Each experiment patches ``kernel_provider`` *in memory only* (the files are not touched)
with a prototype of one proposed change, then runs the matching benchmark of
``run.py`` (same isolated layout, same table). Compare with a plain ``run.py --only …``
run made at a similar machine load. Prototypes, not implementations: they reach into
private methods and may break when ``kernel_provider`` changes.

    /var/cache/jupyter-condatainer/venv/bin/python benchmarks/whatif.py standby [-n 8]

- ``parallel``   ``InstanceManager.acquire`` without holding its lock during
                 ``apptainer instance start`` (non-shared stacks) → benchmark ``concurrent``.
- ``probecache`` the python probe's result reused per stack key (as a persistent cache
                 keyed by the images' identity would) → benchmark ``cold``.
- ``bgstop``     ``InstanceManager.release`` stops the instance in a background task
                 instead of awaiting ``apptainer instance stop`` → benchmark ``shutdown``.
- ``standby``    after each launch, a second ``apptainer exec`` in the same instance
                 pre-imports ipykernel and waits on a FIFO; a restart hands it the kernel's
                 arguments instead of starting Python again → benchmark ``restart``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as B  # noqa: E402

EXPERIMENTS = {"parallel": "concurrent", "probecache": "cold", "bgstop": "shutdown", "standby": "restart"}


def patch_parallel() -> None:
    from kernel_provider.instance import InstanceManager, stack_key

    async def acquire(self, plan, kernel_id, share):
        key = stack_key(plan)
        async with self._lock:
            if share:
                for instance in self.instances.values():
                    if instance.shared and instance.key == key:
                        instance.kernels.add(kernel_id)
                        self._save(instance)
                        return instance
        # A real change would register a per-key "starting" future first so that
        # shared kernels of the same stack wait for one start instead of starting two.
        instance = await self._start(plan, key, share)
        async with self._lock:
            instance.kernels.add(kernel_id)
            self._save(instance)
        return instance

    InstanceManager.acquire = acquire


def patch_probecache() -> None:
    from kernel_provider.instance import InstanceManager

    original = InstanceManager.probe_python
    cache = {}

    async def probe_python(self, instance):
        if instance.python is None and instance.key in cache:
            instance.python = cache[instance.key]
        info = await original(self, instance)
        cache[instance.key] = info
        return info

    InstanceManager.probe_python = probe_python


BACKGROUND: set[asyncio.Future] = set()


def patch_bgstop() -> None:
    from kernel_provider.instance import InstanceManager

    original_stop = InstanceManager._stop

    async def release(self, instance, kernel_id):
        async with self._lock:
            instance.kernels.discard(kernel_id)
            if instance.kernels:
                self._save(instance)
                return
            self.instances.pop(instance.name, None)

        async def stop():
            await original_stop(self, instance.name)
            instance.locks.release()
            instance.env_file.unlink(missing_ok=True)

        task = asyncio.ensure_future(stop())
        BACKGROUND.add(task)
        task.add_done_callback(BACKGROUND.discard)

    InstanceManager.release = release


STANDBY = r'''
import os, sys
fifo = sys.argv[1]
import ipykernel.kernelapp, ipykernel.ipkernel, ipykernel.zmqshell   # the slow part, done ahead
with open(fifo) as handle:
    args = handle.read().split("\0")
os.unlink(fifo)
sys.argv = ["ipykernel_launcher", *args]
ipykernel.kernelapp.launch_new_instance()
'''


def patch_standby() -> None:
    from kernel_provider import command
    from kernel_provider.instance import apptainer_env, runtime_dir
    from kernel_provider.provisioner import CondaTainerProvisioner as P

    script = runtime_dir() / "standby.py"
    script.write_text(STANDBY)
    original_launch, original_cleanup = P.launch_kernel, P.cleanup

    async def spawn_standby(self, cmd, cwd):
        fifo = runtime_dir() / f"standby-{self.kernel_id}-{time.monotonic_ns()}.fifo"
        os.mkfifo(fifo, 0o600)
        env_file = runtime_dir() / f"standby-{self.kernel_id}.env"
        if self._kernel_env_file is not None:
            shutil.copy(self._kernel_env_file, env_file)
        argv = command.instance_exec_argv(self.manager.apptainer, self.instance.name, str(env_file),
                                          [cmd[0], str(script), str(fifo)], pwd=cwd)
        process = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                       env=apptainer_env(), start_new_session=True)
        self._standby = (process, fifo)

    async def launch_kernel(self, cmd, **kwargs):
        standby = getattr(self, "_standby", None)
        cwd = str(kwargs.get("cwd") or os.getcwd())
        if standby is None:
            info = await original_launch(self, cmd, **kwargs)
        else:
            process, fifo = standby

            def hand_over():
                fd = os.open(fifo, os.O_WRONLY)  # waits until the standby has imported and opened it
                os.write(fd, "\0".join(cmd[2:]).encode())  # the args after the launcher script
                os.close(fd)

            await asyncio.to_thread(hand_over)
            self.process = process
            self.pid = self.pgid = process.pid
            self.cwd = cwd
            info = self.connection_info
        self._standby = None
        await spawn_standby(self, cmd, cwd)
        return info

    async def cleanup(self, restart=False):
        if not restart and getattr(self, "_standby", None):
            process, fifo = self._standby
            self._standby = None
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await process.wait()
            Path(fifo).unlink(missing_ok=True)
            (runtime_dir() / f"standby-{self.kernel_id}.env").unlink(missing_ok=True)
        await original_cleanup(self, restart=restart)

    P.launch_kernel, P.cleanup = launch_kernel, cleanup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", choices=sorted(EXPERIMENTS))
    parser.add_argument("-n", type=int, default=8, help="repetitions (default 8)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cntbench-", dir="/tmp"))
    images = B.make_layout(root, isolate_registry=True)
    B.write_kernelspecs(root, images)
    globals()[f"patch_{args.experiment}"]()
    report = B.Report()
    kernels = B.Kernels(root)

    async def scenario():
        bench = B.Bench(kernels, report, args.n, args.n < 5, root)
        try:
            print(f"== what if: {args.experiment} → benchmark {EXPERIMENTS[args.experiment]}", flush=True)
            await getattr(bench, EXPERIMENTS[args.experiment])()
        finally:
            await kernels.stop_all()
            await asyncio.gather(*BACKGROUND, return_exceptions=True)
            await B.stop_instances(kernels)
            kernels.context.destroy(linger=0)

    try:
        asyncio.run(scenario())
    finally:
        left = B.final_cleanup(True, set(kernels.instance_names))
        B.print_table(report)
        print(f"\nload at the end {os.getloadavg()[0]:.2f}" + (f"; stopped leftovers {left}" if left else ""))
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
