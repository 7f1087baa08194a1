"""Instance lifecycle: start, share, keep warm, stop and sweep persistent Apptainer instances.

One :class:`InstanceManager` per server process keeps the instances it started,
the kernels using each, and the CondaTainer shared locks on their images. Every
Apptainer call is an asyncio subprocess, so the server's event loop never waits
on a container.

In a server, which stops what it owns at its exit (:meth:`InstanceManager.serve`), an instance
whose last kernel ended stays *warm* with its fork server for the next kernel of its stack (at
most ``limit`` of them, each for ``timeout`` seconds: :class:`WarmPolicy`, the provisioner's
``warm_*`` options) or stops in the background: a shutdown does not wait for Apptainer. Anywhere
else (a bare KernelManager: nbclient, papermill) the shutdown waits for the stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import subprocess
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from kernel_provider.host import instanceinfo, oci, python, runtime_detect
from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.host.containers import check_fakeroot, fakeroot_hint
from kernel_provider.host.holders import holder, holders
from kernel_provider.host.locks import (
    ImageBusyError,
    SharedLocks,
    in_use_message,
    is_in_use,
)
from kernel_provider.host.probes import user_name
from kernel_provider.host.process import InstanceError, apptainer_env, apptainer_message, run
from kernel_provider.host.python import PythonInfo
from kernel_provider.host.runtime import runtime_dir, write_private
from kernel_provider.host.state import (
    INSTANCE_PREFIX,
    InstanceRecord,
    Owner,
    StateStore,
)
from kernel_provider.host.zygote import Zygote, ZygoteError
from kernel_provider.incontainer.diagnosis import Context, explain
from kernel_provider.incontainer.envlock import EnvLock, env_lock_path
from kernel_provider.model import command
from kernel_provider.model.flavour import Runtime
from kernel_provider.model.plan import ContainerPlan

START_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0
STOP_POLL = 0.05  # seconds between looks at a running stop
WARM_POLL = 1.0  # seconds between looks at a warm instance (still there, fork server alive)
ENV_CHANGE_POLL = 1.0  # seconds between looks at an orphan's env lock


def stack_key(plan: ContainerPlan) -> str:
    """Identity of a stack: kernels with equal keys may share an instance."""
    identity = [
        plan.base_image.path,
        plan.overlay_args,
        list(plan.binds),
        list(plan.flags),
        plan.fakeroot,
        list(plan.env),
    ]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:12]


def image_identity(plan: ContainerPlan) -> list[list]:
    """What says an image is still the one an instance mounted: inode, size and mtime of each
    ``.sif``/``.sqf``; only the inode of an ``.img`` (the instance's own writes change the rest)."""
    identity: list[list] = []
    for image in (plan.base_image, *plan.overlays):
        try:
            st = os.stat(image.path)
        except OSError:
            identity.append([image.path])
            continue
        same = [st.st_dev, st.st_ino] if image.kind == "img" else [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]
        identity.append([image.path, *same])
    return identity


def read_ahead_list(plan: ContainerPlan, python: str) -> Path:
    """Where the fork servers of this stack list the files they read (:meth:`Zygote.read_ahead_list`)."""
    return Zygote.read_ahead_list(python, [image.path for image in (plan.base_image, *plan.overlays)])


def instance_env(name: str, plan: ContainerPlan) -> list[tuple[str, str]]:
    """What every process of an instance gets (its start script, its fork server, each kernel):
    the stack's variables and where the magic finds the instance's description."""
    return [*plan.env, ("CONDATAINER_INFO", str(instanceinfo.path(name)))]


@dataclass(frozen=True)
class WarmPolicy:
    """How long and how many instances stay warm after their last kernel (0: none)."""

    timeout: float = 0.0
    limit: int = 0


@dataclass
class Instance:
    """A running instance started by this server."""

    name: str
    plan: ContainerPlan
    key: str
    env_file: Path
    locks: SharedLocks
    shared: bool
    kernels: set[str] = field(default_factory=set)
    notebooks: dict[str, str] = field(default_factory=dict)  # kernel id → notebook, to name who uses an image
    python: PythonInfo | None = None  # probed once (kernel_provider.host.python)
    # SingularityCE's OCI mode has no instances: the name stands for the kernel's own
    # ``exec --oci`` container, whose process (pid, start time) the record keeps for the sweep.
    oci: bool = False
    oci_process: tuple[int, int] | None = None
    identity: list[list] = field(default_factory=list)  # image_identity() when it started
    zygote: Zygote | None = None  # its fork server, once started
    zygote_start: asyncio.Task | None = None  # the running start of a fork server
    zygote_error: str = ""  # why its last fork server did not start

    @classmethod
    def prepare(
        cls, name: str, plan: ContainerPlan, shared: bool, kernels: Iterable[str] = (), oci: bool = False
    ) -> Instance:
        """An instance about to start (here or in a SLURM job): shared locks on its images, so
        that none is replaced under it, and its env file written."""
        # The .img too: Apptainer's own lock on a mounted .img is an OFD lock, which the CondaTainer
        # CLI's flock probe (``condatainer rm``) does not see, so it would delete the env under the kernel.
        locks = SharedLocks(
            [plan.base_image.path] + [o.path for o in plan.overlays if o.kind in ("sqf", "img")]
        ).acquire()
        env = command.render_env_file(instance_env(name, plan), oci=oci)
        env_file = write_private(runtime_dir() / f"{name}.env", env)
        return cls(
            name, plan, stack_key(plan), env_file, locks, shared, set(kernels), oci=oci, identity=image_identity(plan)
        )

    def may_stay_warm(self) -> bool:
        """Whether an idle instance may be kept for the next kernel. Not in OCI mode (no instance),
        nor with a writable env: one container at a time may mount it, so a warm one would lock
        the CondaTainer CLI and every other stack out of the env until it stops."""
        return not self.oci and not (self.plan.writable and self.plan.env_image) and self.images_unchanged()

    def images_unchanged(self) -> bool:
        """Every image is still the file the instance mounted (none replaced or rewritten)."""
        return image_identity(self.plan) == self.identity

    def fork_server_env(self) -> list[tuple[str, str]]:
        """What every kernel of this instance gets (its fork server too)."""
        return instance_env(self.name, self.plan)

    def mounts(self, path: str) -> bool:
        """The instance has this image mounted."""
        return any(image.path == path for image in (self.plan.base_image, *self.plan.overlays))

    def record(self, slurm_job: str = "", warm: bool = False) -> InstanceRecord:
        """The state file of this instance (CondaTainer's format plus our owner, stack and kernels)."""
        return InstanceRecord(
            name=self.name,
            base_image=self.plan.base_image.path,
            overlays=self.plan.overlay_args,
            bind_paths=list(self.plan.binds),
            env=[f"{k}={v}" for k, v in self.plan.env],
            notes=dict(self.plan.notes),
            owner=Owner.current(),
            stack_key=self.key,
            kernels=sorted(self.kernels),
            notebooks={k: v for k, v in self.notebooks.items() if k in self.kernels},
            slurm_job=slurm_job,
            oci=self.oci,
            oci_process=list(self.oci_process) if self.oci_process else None,
            warm=warm,
        )


class InstanceManager:
    """This server's instances. Use :meth:`for_config` to get the process-wide one."""

    _managers: dict[str, InstanceManager] = {}

    def __init__(self, config: CondaTainerConfig):
        self.config = config
        self.store = StateStore(config.instance_state_dir)
        self.instances: dict[str, Instance] = {}
        self._lock = asyncio.Lock()
        self._starting: dict[str, asyncio.Future] = {}
        self._swept = False
        self._deferred: set[asyncio.Task] = set()  # orphans waiting for an env change to end
        self.warm: dict[str, tuple[Instance, asyncio.Task]] = {}  # name → idle instance, its watch
        self._serving = False  # in a server, which stops what it owns at its exit (serve, close)
        self._background: set[asyncio.Task] = set()  # stops nobody waits for
        self._stopping: dict[str, tuple[Instance, asyncio.Future]] = {}  # name → instance, done when stopped

    @classmethod
    def for_config(cls, config: CondaTainerConfig) -> InstanceManager:
        """The manager for this configuration, shared by everything in the process that uses it.

        Keyed by every configurable value (state directory, Apptainer binary, image
        directories, distro, binds, container env): a manager acts with its own config,
        so two configs that differ in any of them must not share one.
        """
        key = cls._config_key(config)
        if key not in cls._managers:
            cls._managers[key] = cls(config)
        return cls._managers[key]

    @staticmethod
    def _config_key(config: CondaTainerConfig) -> str:
        values = {name: getattr(config, name) for name in config.trait_names(config=True)}
        return json.dumps(values, sort_keys=True)

    @property
    def apptainer(self) -> str:
        """The Apptainer binary, looked up at each use so a missing one is an error that says how to get it."""
        return self.config.require_apptainer()

    @property
    def name_prefix(self) -> str:
        """``jct-<scope>-``: the scope ties a name to this state directory, so a sweep never
        mistakes the instances of a server with another state directory for its orphans."""
        scope = hashlib.sha256(str(self.store.directory).encode()).hexdigest()[:4]
        return f"{INSTANCE_PREFIX}{scope}-"

    async def runtime(self) -> Runtime:
        """Which runtime the binary is — Apptainer or SingularityCE, its version, its default
        mode (asked once per binary)."""
        return await runtime_detect.detect(self.apptainer)

    async def apptainer_version(self) -> str:
        """The runtime's ``--version`` (``singularity-ce version 4.5.1``), for the magic's ``info``."""
        runtime = await self.runtime()
        return runtime.version_line or runtime.label

    async def acquire(
        self,
        plan: ContainerPlan,
        kernel_id: str,
        share: bool,
        notebook: str = "",
        oci: bool = False,
        fork_python: str = "",
    ) -> Instance:
        """An instance for ``plan``: a running shared one with the same stack, or a new one.
        ``notebook``: the kernel's notebook, recorded so that "in use" can name it.

        Starts of different stacks run concurrently; kernels that share a stack wait for
        the one start of it. ``oci``: SingularityCE's OCI mode, which has no instances: the
        kernel's own container takes the instance's place, so it is never shared.
        ``fork_python``: a new instance starts its fork server with this Python as it starts.
        """
        key = stack_key(plan)
        if oci:
            instance = await self._start(plan, key, False, oci=True)
        elif (warm := self._take_warm(key, share)) is not None:
            instance = warm
        elif share:
            instance = await self._shared(plan, key, fork_python)
        else:
            instance = await self._start(plan, key, False, fork_python=fork_python)
        instance.kernels.add(kernel_id)
        if notebook:
            instance.notebooks[kernel_id] = notebook
        self._save(instance)
        return instance

    def _take_warm(self, key: str, share: bool) -> Instance | None:
        """A warm instance of this stack, now in use again; one whose images changed on disk, or
        that was stopped under us (``instances stop --warm``), is stopped instead."""
        for name, (instance, watch) in list(self.warm.items()):
            if instance.key != key:
                continue
            del self.warm[name]
            watch.cancel()
            if instance.images_unchanged() and self.store.path(name).exists():
                instance.shared = share
                self.instances[name] = instance
                return instance
            self._in_background(self._stop_instance(instance))
        return None

    async def _shared(self, plan: ContainerPlan, key: str, fork_python: str) -> Instance:
        """The running shared instance of this stack, or the one start of it that all its kernels await."""
        async with self._lock:
            running = next((i for i in self.instances.values() if i.shared and i.key == key), None)
            if running is not None:
                return running
            starting = self._starting.get(key)
            if starting is None:
                start = self._start(plan, key, True, fork_python=fork_python)
                starting = self._starting[key] = asyncio.ensure_future(start)
                starting.add_done_callback(lambda _: self._starting.pop(key, None))
        return await asyncio.shield(starting)

    async def adopt(self, name: str, plan: ContainerPlan, kernel_id: str, share: bool) -> Instance:
        """Take over a running instance that a server of this user that is gone started, for one
        of its kernels (``persist_kernels``): this server now owns it and its state file says so."""
        async with self._lock:
            instance = self.instances.get(name)
            if instance is None:
                instance = self.instances[name] = Instance.prepare(name, plan, share)
            instance.kernels.add(kernel_id)
            self._save(instance)
        return instance

    async def release(self, instance: Instance, kernel_id: str, warm: WarmPolicy = WarmPolicy()) -> None:
        """Forget a kernel. When no kernel uses the instance any more it stays warm (``warm``, in
        a server) or stops: in the background in a server, where the caller does not wait for it."""
        async with self._lock:
            instance.kernels.discard(kernel_id)
            instance.notebooks.pop(kernel_id, None)
            if instance.kernels:
                self._save(instance)
                return
            self.instances.pop(instance.name, None)
            if self._serving and warm.timeout > 0 and warm.limit > 0 and instance.may_stay_warm():
                self._keep_warm(instance, warm)
                return
        if self._serving:
            self._in_background(self._stop_instance(instance))
        else:
            await self._stop_instance(instance)

    def _keep_warm(self, instance: Instance, warm: WarmPolicy) -> None:
        """Keep an idle instance for ``warm.timeout`` seconds; the oldest beyond ``warm.limit`` stops."""
        watch = self._in_background(self._watch_warm(instance, warm.timeout))
        self.warm[instance.name] = (instance, watch)
        self.store.write(instance.record(warm=True))
        while len(self.warm) > warm.limit:
            oldest, old_watch = self.warm.pop(next(iter(self.warm)))
            old_watch.cancel()
            self._in_background(self._stop_instance(oldest))

    async def _watch_warm(self, instance: Instance, timeout: float) -> None:
        """Stop a warm instance after ``timeout``, or at once when it was stopped under us
        (``instances stop --warm`` removed its state file, its fork server ended): its image
        locks must not outlive it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (  # noqa: ASYNC110 - another process may stop it: nothing to await but a look
            loop.time() < deadline
            and self.store.path(instance.name).exists()
            and (instance.zygote is None or instance.zygote.alive())
        ):
            await asyncio.sleep(min(WARM_POLL, max(deadline - loop.time(), 0)))
        if self.warm.get(instance.name, (None,))[0] is instance:
            del self.warm[instance.name]
            await self._stop_instance(instance)

    async def stop_warm(self, name: str | None = None, image: str | None = None) -> list[str]:
        """Stop warm instances (one by ``name``, those mounting ``image``, or all) and wait for it:
        before our own change of an image, and at the server's exit. With ``image``, also wait for
        the stops already under way of instances that mount it (a kernel shut down just before)."""
        chosen = [
            self.warm.pop(n)
            for n, (i, _) in list(self.warm.items())
            if (name is None or n == name) and (image is None or i.mounts(image))
        ]
        for _, watch in chosen:
            watch.cancel()
        stopping = [done for i, done in list(self._stopping.values()) if image is not None and i.mounts(image)]
        await asyncio.gather(*(self._stop_instance(i) for i, _ in chosen), *stopping)
        return [i.name for i, _ in chosen]

    def warm_mounting(self, image: str) -> bool:
        """A warm instance has this image mounted (it is stopped before we change the image)."""
        return any(instance.mounts(image) for instance, _ in list(self.warm.values()))

    def serve(self) -> None:
        """Called by the server extension, which calls :meth:`close` at the server's exit: from now
        on instances may stay warm, and stop in the background."""
        self._serving = True

    async def close(self) -> None:
        """At the server's exit: no more warm instances; stop the warm ones, wait for the stops
        running in the background."""
        self._serving = False
        await self.stop_warm()
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def _in_background(self, work: Coroutine) -> asyncio.Task:
        """Run ``work`` nobody waits for, except :meth:`close`."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _stop_instance(self, instance: Instance) -> None:
        """Stop an instance we hold, its fork server with it; then let its images go."""
        done = asyncio.get_running_loop().create_future()
        self._stopping[instance.name] = (instance, done)
        try:
            await self._stop_and_release(instance)
        finally:
            self._stopping.pop(instance.name, None)
            done.set_result(None)

    async def _stop_and_release(self, instance: Instance) -> None:
        if instance.oci:
            try:
                await self._stop(instance.name)
            finally:
                instance.locks.release()
            return
        stopping = self._begin_stop(instance.name)
        try:
            if instance.zygote_start is not None:
                instance.zygote_start.cancel()
            if instance.zygote is not None:
                await instance.zygote.close()
            await self._finish_stop(instance.name, stopping)
        finally:
            instance.locks.release()

    async def zygote(self, instance: Instance, python: str, wait: bool, renew: bool = False) -> Zygote | None:
        """The instance's running fork server, or None. A dead or missing one (any, when
        ``renew``: it refused a kernel) is (re)started: awaited when ``wait``, else in the
        background for a later kernel."""
        if not renew and instance.zygote is not None and instance.zygote.alive():
            return instance.zygote
        if instance.zygote_start is None:
            instance.zygote_start = asyncio.get_running_loop().create_task(self._start_zygote(instance, python))
        if not wait:
            return None
        return await asyncio.shield(instance.zygote_start)

    async def _start_zygote(self, instance: Instance, python: str, starting: bool = False) -> Zygote | None:
        """A new fork server: the one the instance's start script runs (``starting``), one a server
        before this one started (an adopted instance), or one started by exec."""
        old, instance.zygote = instance.zygote, None
        try:
            if old is not None:
                await old.close()
            instance.zygote = await self._new_zygote(instance, python, starting)
            instance.zygote_error = ""
        except (ZygoteError, OSError) as err:
            instance.zygote_error = str(err)
        finally:
            instance.zygote_start = None
        return instance.zygote

    async def _new_zygote(self, instance: Instance, python: str, starting: bool) -> Zygote:
        if starting:
            return await Zygote.attach(instance.name, python, wait=True)
        with contextlib.suppress(ZygoteError):
            return await Zygote.attach(instance.name, python, wait=False)
        return await Zygote.start(
            self.apptainer,
            instance.name,
            instance.fork_server_env(),
            python,
            str(runtime_dir()),
            read_ahead_list(instance.plan, python),
        )

    def _check_env_image(self, plan: ContainerPlan, oci: bool = False) -> None:
        env_image = plan.env_image
        if env_image and plan.writable and is_in_use(env_image.path):
            share = (
                " (in OCI mode each kernel is a container of its own: two cannot share it)"
                if oci
                else ", or use a kernel with share_instance so both notebooks use one instance"
            )
            ours = holders(self.store, [env_image.path]).get(env_image.path)
            what = f"Shut that kernel down{share}" if ours else "End that program first"
            raise ImageBusyError(
                in_use_message(
                    f"The env {os.path.basename(env_image.path)}",
                    ours or holder(self.store, env_image.path),
                    advice=f"a writable env can be mounted by one container at a time. {what}.",
                )
            )

    async def _start(
        self, plan: ContainerPlan, key: str, share: bool, oci: bool = False, fork_python: str = ""
    ) -> Instance:
        apptainer = self.apptainer
        check_fakeroot(plan)
        self._check_env_image(plan, oci)
        name = f"{self.name_prefix}{key[:8]}-{secrets.token_hex(3)}"
        instance = Instance.prepare(name, plan, share, oci=oci)
        # State first: a crash during start still leaves something the sweep can find.
        self._save(instance)
        if oci:  # nothing to start: the kernel's own exec --oci is the container
            self.instances[name] = instance
            await instanceinfo.write(instance, self.config, await self.apptainer_version())
            return instance
        try:
            # The fork server as the instance's start script: it imports while the start finishes.
            script = ""
            if fork_python:
                script = str(Zygote.write_start_script(name, fork_python, read_ahead_list(plan, fork_python)))
            start = command.instance_start_argv(apptainer, plan, name, str(instance.env_file), script)
            result = await run(start, START_TIMEOUT)
            if result.returncode != 0:
                stack = f"{plan.base_image.name} + {', '.join(o.name for o in plan.overlays) or 'no overlays'}"
                images = [plan.base_image.path, *(o.path for o in plan.overlays)]
                context = Context(holders=holders(self.store, images, exclude=name), user=user_name(os.getuid()))
                raise InstanceError(
                    explain(f"{os.path.basename(apptainer)} instance start for {stack}", result.stderr, context)
                    + fakeroot_hint(plan)
                    + runtime_detect.loop_device_hint(apptainer, result.stderr)
                )
        except BaseException:
            await self._stop(name)
            instance.locks.release()
            raise
        self.instances[name] = instance
        if fork_python:
            task = asyncio.get_running_loop().create_task(self._start_zygote(instance, fork_python, starting=True))
            instance.zygote_start = task
        await instanceinfo.write(instance, self.config, await self.apptainer_version())
        return instance

    def _save(self, instance: Instance) -> None:
        self.store.write(instance.record())

    def note_oci_process(self, instance: Instance, pid: int | None) -> None:
        """Record the OCI-mode kernel's ``exec --oci`` process, so a sweep after a crash can end it."""
        instance.oci_process = oci.identify(pid) if pid else None
        self._save(instance)

    async def _stop(self, name: str) -> None:
        """Stop an instance (if running) and remove its state and runtime files."""
        record = self.store.read(name)
        if record is not None and record.oci:  # no instance: the kernel's own container, by its process
            try:
                if record.oci_process is not None:
                    pid, start = record.oci_process
                    await oci.stop_container((pid, start), STOP_TIMEOUT)
            finally:
                self._forget(name)
            return
        await self._finish_stop(name, self._begin_stop(name))

    def _begin_stop(self, name: str) -> subprocess.Popen:
        """Start ``apptainer instance stop``, detached: it goes on to its end even when this process
        stops waiting for it (a cancelled task, a server that exits right after a shutdown)."""
        return subprocess.Popen(
            command.instance_stop_argv(self.apptainer, name),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=apptainer_env(self.apptainer),
            start_new_session=True,
        )

    async def _finish_stop(self, name: str, stopping: subprocess.Popen) -> None:
        """Wait for a stop (without blocking the loop), then forget the instance."""
        try:
            deadline = asyncio.get_running_loop().time() + STOP_TIMEOUT
            while stopping.poll() is None and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(STOP_POLL)  # a detached process: nothing to await but its end
        finally:
            self._forget(name)

    def _forget(self, name: str) -> None:
        """Remove an instance's state file and its runtime files (a crashed server's fork server's too)."""
        self.store.remove(name)
        directory = runtime_dir()
        for path in (directory / f"{name}.env", instanceinfo.path(name), *Zygote.files(directory, name)):
            path.unlink(missing_ok=True)

    async def stop_by_name(self, name: str) -> None:
        """Stop one of our instances by name (any of this user's servers); refuse others'."""
        if (
            not name.startswith(self.name_prefix)
            or self.store.read(name) is None
            and name not in await self.running_names()
        ):
            raise InstanceError(f"{name} is not a jupyter-condatainer instance of this user")
        async with self._lock:
            if name in self.warm:
                await self.stop_warm(name)
                return
            instance = self.instances.pop(name, None)
            if instance:
                await self._stop_instance(instance)
            else:
                await self._stop(name)

    async def stop_warm_of_any_server(self) -> list[str]:
        """Stop this user's warm instances, whichever server keeps them (``instances stop --warm``):
        that server starts a new instance for its next kernel of the stack."""
        names = [record.name for record in self.store.ours() if record.warm and not record.kernels]
        for name in names:
            await self.stop_by_name(name)
        return names

    async def probe_python(self, instance: Instance) -> PythonInfo:
        """Which ``python`` the stack's PATH gives and whether it has ipykernel (once per instance)."""
        if instance.python is None:
            instance.python = await python.probe_python(
                self.apptainer, instance.name, str(instance.env_file), instance.plan, oci=instance.oci
            )
        return instance.python

    async def running_names(self) -> list[str]:
        """Names of this user's running Apptainer instances (anyone's, not only ours)."""
        result = await run(command.instance_list_argv(self.apptainer), STOP_TIMEOUT)
        if result.returncode != 0:
            raise InstanceError(f"apptainer instance list failed:\n{apptainer_message(result.stderr)}")
        try:
            listing = json.loads(result.stdout or "{}").get("instances", [])
        except ValueError:
            return []
        return [entry.get("instance", "") for entry in listing]

    async def sweep_orphans_once(self) -> None:
        """Clean up after a crashed server the first time this process needs an instance, and
        drop the read-ahead lists of stacks unused for a month."""
        if not self._swept:
            self._swept = True
            await self.sweep_orphans()
            await asyncio.to_thread(Zygote.sweep_read_ahead_lists, runtime_dir())

    async def sweep_orphans(self) -> list[str]:
        """Stop our instances whose server is gone; never touch a live server's or the CLI's."""
        async with self._lock:
            running = set(await self.running_names())
            records = {r.name: r for r in self.store.ours()}
            orphans = [
                name
                for name, record in records.items()
                if name not in self.instances and name not in self.warm and not record.owner.is_alive()
            ]
            # Ours by name but without a state file: its start or stop was cut short.
            orphans += [
                name
                for name in running
                if name.startswith(self.name_prefix)
                and name not in records
                and name not in self.instances
                and name not in self.warm
            ]
            changing = {name: lock for name in orphans if (lock := self._env_change_lock(records.get(name)))}
            await asyncio.gather(
                *(self._stop_orphan(name, name in running) for name in orphans if name not in changing)
            )
        for name, lock in changing.items():
            task = asyncio.get_running_loop().create_task(self._stop_after_env_change(name, lock))
            self._deferred.add(task)
            task.add_done_callback(self._deferred.discard)
        return orphans

    def _env_change_lock(self, record: InstanceRecord | None) -> EnvLock | None:
        """The env lock of an orphan's writable env while a change holds it (the magic's, or an
        install the dead server started in it), else None."""
        if record is None:
            return None
        for arg in record.overlays:
            path, _, mode = arg.rpartition(":")
            if mode == "rw" and path.endswith(".img"):
                lock = EnvLock(env_lock_path(self.config.state_dir, path))
                return lock if lock.is_taken() else None
        return None

    async def _stop_after_env_change(self, name: str, lock: EnvLock) -> None:
        """Stop an orphan once the env change running in it has ended: killing it midway would
        leave the env half-changed."""
        while await asyncio.to_thread(lock.is_taken):  # noqa: ASYNC110 - another process holds it
            await asyncio.sleep(ENV_CHANGE_POLL)
        async with self._lock:
            await self._stop(name)

    async def _stop_orphan(self, name: str, running: bool) -> None:
        record = self.store.read(name)
        if running or record is not None and record.oci:  # OCI: judged by its recorded process
            await self._stop(name)
        else:
            self._forget(name)
