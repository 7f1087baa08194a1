"""Instance lifecycle: start, share, probe, stop and sweep persistent Apptainer instances.

One :class:`InstanceManager` per server process keeps the instances it started,
the kernels using each, and the CondaTainer shared locks on their images. Every
Apptainer call is an asyncio subprocess, so the server's event loop never waits
on a container.
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import hashlib
import json
import os
import secrets
import signal
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from jupyter_core.paths import jupyter_runtime_dir

from . import command, probes
from .config import CondaTainerConfig
from .locks import ImageBusyError, SharedLocks, env_lock_path, is_in_use
from .plan import ContainerPlan
from .probes import ImageProbe
from .state import INSTANCE_PREFIX, InstanceRecord, Owner, StateStore

START_TIMEOUT = 120.0
PR_SET_PDEATHSIG = 1  # <sys/prctl.h>
_LIBC = ctypes.CDLL(None, use_errno=True)
STOP_TIMEOUT = 60.0
PROBE_CACHE_SIZE = 200
PROBE_SCRIPT = (
    "import importlib.util, json, platform, sys; print(json.dumps({'executable': sys.executable, "
    "'version': list(sys.version_info[:2]), 'glibc': platform.libc_ver()[1], "
    "'ipykernel': importlib.util.find_spec('ipykernel') is not None}))"
)


class InstanceError(RuntimeError):
    """An instance could not be started, probed or stopped; the message says why."""


class NoPythonError(InstanceError):
    """The stack has no ``python`` on its PATH."""


class FakerootUnavailableError(InstanceError):
    """The stack needs ``--fakeroot`` and this user cannot have it; the message says what the admin must add."""


def _needs_fakeroot_because(plan: ContainerPlan) -> str:
    env_image = plan.env_image
    if env_image is not None and plan.writable:
        return f"{os.path.basename(env_image.path)} belongs to another user (or root) and is mounted writable, so it needs --fakeroot"
    return "this stack asks for --fakeroot"


def check_fakeroot(plan: ContainerPlan) -> None:
    """Refuse a ``--fakeroot`` plan this user cannot run (before Apptainer fails obscurely)."""
    if plan.fakeroot and (problem := probes.fakeroot_problem(os.getuid())):
        raise FakerootUnavailableError(f"{_needs_fakeroot_because(plan)}, which is not available: {problem}")


def fakeroot_hint(plan: ContainerPlan) -> str:
    """Advice for a failed ``--fakeroot`` start by a user without subuid/subgid ranges."""
    advice = probes.missing_subids(os.getuid()) if plan.fakeroot else None
    return f"\n{_needs_fakeroot_because(plan)}: {advice}" if advice else ""


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


def _cap_bounding_set() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("CapBnd:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return ~0


def apptainer_env() -> dict[str, str]:
    """Environment for running ``apptainer`` itself on this host."""
    return command.apptainer_process_env(os.environ, os.getuid(), _cap_bounding_set())


async def spawn(
    argv: Sequence[str], env: dict[str, str] | None = None, merge_stderr: bool = False, die_with_parent: bool = False
):
    """Start a command in its own process group, output piped, without blocking the loop.

    ``die_with_parent``: the command gets SIGKILL when this process dies (for work on a
    temporary copy, which a dead server's successor deletes: nothing may keep writing it).
    """
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE,
        env=env or apptainer_env(),
        start_new_session=True,
        preexec_fn=_kill_me_with_parent if die_with_parent else None,
    )


def _kill_me_with_parent() -> None:
    """In the forked child: ask the kernel for SIGKILL when the parent exits (Linux prctl)."""
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


async def kill_group(process: asyncio.subprocess.Process) -> None:
    """Kill a spawned command and everything it started (Apptainer forks a starter)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    await process.wait()


async def run(argv: Sequence[str], timeout: float, env: dict[str, str] | None = None) -> CommandResult:
    """Run a command to completion without blocking the loop; kill it on timeout or cancel."""
    process = await spawn(argv, env)
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except (asyncio.TimeoutError, asyncio.CancelledError):
        await kill_group(process)
        raise
    return CommandResult(process.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"))


def apptainer_message(stderr: str) -> str:
    """The lines of Apptainer's output a user needs (drop the gocryptfs noise)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip() and "gocryptfs" not in line]
    return "\n".join(lines[-8:]) or "(no output)"


def runtime_dir() -> Path:
    """User-only directory for env files (and ipc sockets); bound into every instance."""
    path = Path(jupyter_runtime_dir()) / "condatainer"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, text: str) -> Path:
    """Write a user-only file atomically (env files can hold secrets)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
    return path


def stack_key(plan: ContainerPlan) -> str:
    """Identity of a stack: kernels with equal keys may share an instance."""
    identity = [plan.base_image.path, plan.overlay_args, list(plan.binds), list(plan.flags), plan.fakeroot, list(plan.env)]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:12]


def _probe_cache_path() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "jupyter-condatainer" / "python-probes.json"


def _probe_key(plan: ContainerPlan) -> str:
    identities = []
    for image in (plan.base_image, *plan.overlays):
        try:
            st = os.stat(image.path)
            identities.append([image.path, st.st_size, st.st_mtime_ns])
        except OSError:
            identities.append([image.path])
    return hashlib.sha256(json.dumps([identities, plan.env_dict.get("PATH", "")]).encode()).hexdigest()[:16]


def _read_probe_cache() -> dict:
    try:
        return json.loads(_probe_cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _add_to_probe_cache(key: str, entry: dict) -> None:
    """Add one probe result, read-modify-write under a lock, replacing the file atomically.

    Kernel starts of one server (each in a worker thread) and of other servers of this
    user update the file at once; without the lock one's entry overwrites another's.
    The lock blocks, so call this off the event loop.
    """
    path = _probe_cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cache = _read_probe_cache()
        cache.pop(key, None)  # newest last: the size cap drops the oldest
        cache[key] = entry
        write_private(path, json.dumps(dict(list(cache.items())[-PROBE_CACHE_SIZE:])))


def overlay_notes(plan: ContainerPlan) -> dict[str, dict]:
    """What each overlay's build script and sidecar say about it, for the magic's ``info``.

    Reading a ``.sqf``'s build script runs ``unsquashfs``, so call this off the event loop.
    """
    return {o.name: asdict(ImageProbe().overlay_env(o)) for o in plan.overlays}


@dataclass(frozen=True)
class PythonInfo:
    executable: str
    version: tuple[int, int]
    has_ipykernel: bool
    glibc: str = ""


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
    python: PythonInfo | None = None


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
        self._version = ""

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
        return self.config.require_apptainer()

    @property
    def name_prefix(self) -> str:
        """``jct-<scope>-``: the scope ties a name to this state directory, so a sweep never
        mistakes the instances of a server with another state directory for its orphans."""
        scope = hashlib.sha256(str(self.store.directory).encode()).hexdigest()[:4]
        return f"{INSTANCE_PREFIX}{scope}-"

    async def apptainer_version(self) -> str:
        if not self._version:
            result = await run([self.apptainer, "--version"], STOP_TIMEOUT)
            self._version = result.stdout.strip() or "unknown"
        return self._version

    def info_path(self, name: str) -> Path:
        """Where the kernel-side magic reads what its stack is made of."""
        return runtime_dir() / f"{name}.json"

    async def _write_info(self, instance: Instance) -> None:
        plan = instance.plan
        env_image = plan.env_image
        info = {
            "instance": instance.name,
            "apptainer_version": await self.apptainer_version(),
            "base_image": plan.base_image.path,
            "overlays": [
                {"name": o.name, "path": o.path, "kind": o.kind, "mount": o.mount_arg(plan.writable)} for o in plan.overlays
            ],
            "writable_env": env_image.path if env_image and plan.writable else None,
            "env_lock": env_lock_path(self.config.state_dir, env_image.path) if env_image and plan.writable else None,
            "notes": await asyncio.to_thread(overlay_notes, plan),
            "image_dirs": list(self.config.image_dirs),
            "shared": instance.shared,
        }
        write_private(self.info_path(instance.name), json.dumps(info, indent=1))

    async def acquire(self, plan: ContainerPlan, kernel_id: str, share: bool) -> Instance:
        """An instance for ``plan``: a running shared one with the same stack, or a new one.

        Starts of different stacks run concurrently; kernels that share a stack wait for
        the one start of it.
        """
        key = stack_key(plan)
        if share:
            async with self._lock:
                instance = next((i for i in self.instances.values() if i.shared and i.key == key), None)
                starting = self._starting.get(key)
                if instance is None and starting is None:
                    starting = self._starting[key] = asyncio.ensure_future(self._start(plan, key, share))
                    starting.add_done_callback(lambda _: self._starting.pop(key, None))
            if instance is None:
                instance = await asyncio.shield(starting)
        else:
            instance = await self._start(plan, key, share)
        instance.kernels.add(kernel_id)
        self._save(instance)
        return instance

    async def release(self, instance: Instance, kernel_id: str) -> None:
        """Forget a kernel; stop the instance when no kernel uses it any more."""
        async with self._lock:
            instance.kernels.discard(kernel_id)
            if instance.kernels:
                self._save(instance)
                return
            self.instances.pop(instance.name, None)
        await self._stop(instance.name)
        instance.locks.release()

    def _check_env_image(self, plan: ContainerPlan) -> None:
        env_image = plan.env_image
        if env_image and plan.writable and is_in_use(env_image.path):
            raise ImageBusyError(
                f"{env_image.path} is mounted by another container (a running kernel or a CondaTainer "
                "shell); a writable env can be mounted once. Stop that kernel, or use a kernel with "
                "share_instance so both notebooks use one instance."
            )

    async def _start(self, plan: ContainerPlan, key: str, share: bool) -> Instance:
        apptainer = self.apptainer
        check_fakeroot(plan)
        self._check_env_image(plan)
        locks = SharedLocks([plan.base_image.path] + [o.path for o in plan.overlays if o.kind == "sqf"]).acquire()
        name = f"{self.name_prefix}{key[:8]}-{secrets.token_hex(3)}"
        env_file = write_private(runtime_dir() / f"{name}.env", command.render_env_file(plan.env))
        instance = Instance(name, plan, key, env_file, locks, share)
        # State first: a crash during start still leaves something the sweep can find.
        self._save(instance)
        try:
            result = await run(command.instance_start_argv(apptainer, plan, name, str(env_file)), START_TIMEOUT)
            if result.returncode != 0:
                raise InstanceError(
                    f"apptainer instance start failed for {plan.base_image.name} + "
                    f"{', '.join(o.name for o in plan.overlays) or 'no overlays'}:\n{apptainer_message(result.stderr)}"
                    + fakeroot_hint(plan)
                )
        except BaseException:
            await self._stop(name)
            locks.release()
            raise
        self.instances[name] = instance
        await self._write_info(instance)
        return instance

    def _save(self, instance: Instance) -> None:
        plan = instance.plan
        self.store.write(
            InstanceRecord(
                name=instance.name,
                base_image=plan.base_image.path,
                overlays=plan.overlay_args,
                bind_paths=list(plan.binds),
                env=[f"{k}={v}" for k, v in plan.env],
                notes=dict(plan.notes),
                owner=Owner.current(),
                stack_key=instance.key,
                kernels=sorted(instance.kernels),
            )
        )

    async def _stop(self, name: str) -> None:
        """Stop an instance (if running) and remove its state and runtime files."""
        try:
            await run(command.instance_stop_argv(self.apptainer, name), STOP_TIMEOUT)
        finally:
            self._forget(name)

    def _forget(self, name: str) -> None:
        """Remove an instance's state file and its runtime files."""
        self.store.remove(name)
        for path in (runtime_dir() / f"{name}.env", self.info_path(name)):
            path.unlink(missing_ok=True)

    async def stop_by_name(self, name: str) -> None:
        """Stop one of our instances by name (any of this user's servers); refuse others'."""
        if not name.startswith(self.name_prefix) or self.store.read(name) is None and name not in await self.running_names():
            raise InstanceError(f"{name} is not a jupyter-condatainer instance of this user")
        async with self._lock:
            instance = self.instances.pop(name, None)
            await self._stop(name)
            if instance:
                instance.locks.release()

    async def probe_python(self, instance: Instance) -> PythonInfo:
        """Which ``python`` the stack's PATH gives, and whether it has ipykernel.

        Cached on the instance and on disk, keyed by the images' identities, so only the
        first start of a stack pays for the probe (an install into the env changes its
        ``.img`` and so the key).
        """
        if instance.python is None:
            key = _probe_key(instance.plan)
            cached = _read_probe_cache().get(key)
            if cached:
                instance.python = PythonInfo(**{**cached, "version": tuple(cached["version"])})
                return instance.python
            argv = command.instance_exec_argv(
                self.apptainer, instance.name, str(instance.env_file), ["python", "-c", PROBE_SCRIPT]
            )
            result = await run(argv, START_TIMEOUT)
            if result.returncode != 0:
                if "not found" in result.stderr:
                    raise NoPythonError(
                        "no `python` on the container PATH of this stack "
                        f"({', '.join(o.name for o in instance.plan.overlays) or 'base image only'}). Add a "
                        "Python overlay (e.g. python/3.11) or an env .img with python to the kernel's overlays."
                    )
                raise InstanceError(f"probing python in {instance.name} failed:\n{apptainer_message(result.stderr)}")
            info = json.loads(result.stdout.strip().splitlines()[-1])
            instance.python = PythonInfo(info["executable"], tuple(info["version"]), info["ipykernel"], info["glibc"])
            await asyncio.to_thread(_add_to_probe_cache, key, asdict(instance.python))
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
        """Clean up after a crashed server the first time this process needs an instance."""
        if not self._swept:
            self._swept = True
            await self.sweep_orphans()

    async def sweep_orphans(self) -> list[str]:
        """Stop our instances whose server is gone; never touch a live server's or the CLI's."""
        async with self._lock:
            running = set(await self.running_names())
            records = {r.name: r for r in self.store.ours()}
            orphans = [
                name for name, record in records.items()
                if name not in self.instances and not record.owner.is_alive()
            ]
            # Ours by name but without a state file: its start or stop was cut short.
            orphans += [
                name for name in running
                if name.startswith(self.name_prefix) and name not in records and name not in self.instances
            ]
            await asyncio.gather(*(self._stop_orphan(name, name in running) for name in orphans))
            return orphans

    async def _stop_orphan(self, name: str, running: bool) -> None:
        if running:
            await self._stop(name)
        else:
            self._forget(name)
