"""``%condatainer``: manage the running kernel's CondaTainer env from a notebook.

Runs inside the container with only the standard library and IPython. Package changes
call CondaTainer's own wrappers (``mm-install -y`` …) right here in the kernel's
instance, where the env's ``.img`` is mounted writable, holding the same per-env lock
as the server's REST API so the two never change one env at once. New packages import
at once; a package that was already imported and changed needs a kernel restart.
"""

from __future__ import annotations

import importlib
import json
import os
import shlex
import signal
import site
import subprocess
import sys
import time
from contextlib import contextmanager

from IPython.core.magic import Magics, line_magic, magics_class

from . import history, proctree, txplan
from .constants import ENV_PREFIX
from .diagnosis import diagnose
from .envlock import EnvBusyError, EnvLock

# How an interrupted command is stopped: SIGINT first (what Ctrl-C in a terminal sends), then
# harder signals when it has not ended within the seconds given; interrupting again skips ahead.
STOP_STEPS = ((signal.SIGINT, 30.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0))
STOP_POLL_INTERVAL = 0.1
USAGE = """Manage the packages of this kernel's CondaTainer env.

  %condatainer info                     base image, overlays, writable env, instance, notes,
                                        a SLURM kernel's job and when its time limit ends it
  %condatainer list [PATTERN]           packages in the env (name, version, build, channel)
  %condatainer install SPEC… [-c CH] [--dry-run]
  %condatainer update SPEC…  [-c CH] [--dry-run]
  %condatainer remove SPEC…  [--dry-run]
                                        change the env now (an install or update that would
                                        not fit in the env is refused first); with --dry-run
                                        only show the solver's plan (added, removed,
                                        up/downgraded, download size) and change nothing
  %condatainer apply                    make the change the last --dry-run showed (refused
                                        when the env changed since)
  %condatainer overlays                 images available in the image directories
  %condatainer history [--json]         the env's revisions: when, who, what, packages changed
  %condatainer export [yml|lock] [--revision N] [-o FILE]
                                        environment.yml (asked-for specs + channels) or an
                                        @EXPLICIT lock (every package URL + md5) of a revision
  %condatainer create NAME [SPEC…] [-c CH] [--size MB] [--no-kernel]
                                        a new env NAME.img (through the Jupyter server) and
                                        its kernel 'CondaTainer: NAME (env)'

Examples:
  %condatainer install numpy
  %condatainer install numpy --dry-run
  %condatainer apply
  %condatainer install "libdemo>=2" -c file:///data/channel
  %condatainer list demo
"""


class CondaTainerError(RuntimeError):
    """A package operation failed; the message is the tool's own."""


class CommandInterrupted(KeyboardInterrupt):
    """The cell was interrupted while a command ran; the command has been stopped (``ended``)
    or, if it outlived even SIGKILL, is still there (``ended`` false)."""

    def __init__(self, ended: bool):
        super().__init__()
        self.ended = ended


def _info() -> dict:
    path = os.environ.get("CONDATAINER_INFO", "")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


def _job_end(end_time: float | None) -> str:
    """ "ends 2026-12-02 18:40:00 UTC (in 59 min)": when the job's time limit ends this kernel."""
    if not end_time:
        return "no time limit"
    left = int(max(0, end_time - time.time()))
    hours, rest = divmod(left, 3600)
    span = f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"
    return f"ends {time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(end_time))} (in {span})"


def _conda_meta() -> dict[str, dict]:
    """Package name → its whole record (with ``files``: what a restart note needs)."""
    return {record["name"]: record for record in history.read_package_records(os.path.join(ENV_PREFIX, "conda-meta"))}


OPTIONS_WITH_VALUE = ("-c", "--channel")  # mm-* options whose next word is not a spec


def _specs_of(args: list[str]) -> list[str]:
    """The package specs among ``mm-*`` arguments (``install numpy -c conda-forge`` → ``numpy``)."""
    specs, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in OPTIONS_WITH_VALUE:
            skip = True
        elif not arg.startswith("-"):
            specs.append(arg)
    return specs


def _history_stamp() -> tuple[int, int]:
    """Identity of the env's state: ``conda-meta/history`` grows with every change."""
    try:
        stat = os.stat(os.path.join(ENV_PREFIX, "conda-meta", "history"))
    except OSError:
        return (0, 0)
    return (stat.st_size, stat.st_mtime_ns)


def _versions(records: dict[str, dict]) -> dict[str, str]:
    return {name: str(record.get("version", "")) for name, record in records.items()}


def _top_level_modules(record: dict) -> set[str]:
    """Importable top-level names a conda package installs into site-packages."""
    found = set()
    for path in record.get("files", []):
        parts = path.split("/")
        if "site-packages" in parts:
            index = parts.index("site-packages")
            if index + 1 < len(parts):
                found.add(parts[index + 1].split(".")[0])
    return {name for name in found if name.isidentifier()}


def _refresh_import_paths() -> None:
    """Make freshly installed packages importable without a restart."""
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    site_dir = os.path.join(ENV_PREFIX, "lib", version, "site-packages")
    if os.path.isdir(site_dir) and site_dir not in sys.path:
        site.addsitedir(site_dir)
    importlib.invalidate_caches()


@contextmanager
def _env_lock(path: str | None):
    """Wait for (and hold) the env's lock shared with the server's operations."""
    if not path:
        yield
        return
    lock = EnvLock(path)
    try:
        lock.acquire()
    except EnvBusyError:
        print("waiting for another operation on this env to finish…", flush=True)
        lock.acquire(blocking=True)
    try:
        yield
    finally:
        lock.release()


def _plan(verb: str, args: list[str]) -> dict:
    """The solver's plan for the change (``mm-VERB --dry-run --json``, :mod:`.txplan`); nothing changes.
    When it cannot be made, the solver's words go into the cell and the error says what they mean."""
    try:
        returncode, out, err = run_quietly(txplan.dry_run_command(verb, args))
    except CommandInterrupted:
        raise CondaTainerError(
            f"%condatainer {verb} was interrupted and mm-{verb} was stopped while it planned the change "
            "(a dry run); nothing was changed."
        ) from None
    if returncode != 0:
        print(err, end="", flush=True)
        raise CondaTainerError(_failure_line(f"mm-{verb} --dry-run", returncode, err))
    return txplan.parse_transaction(out)


def _failure_line(command: str, returncode: int, output: str) -> str:
    """What a failed ``mm-*`` means, in one line (its own lines are in the cell's output already)."""
    found = diagnose(output)
    first = found.line if found else f"{command} failed (exit {returncode}), see its output above"
    return first if "nothing was changed" in first else f"{first}; the env is unchanged"


def _room_refusal(verb: str, plan: dict, info: dict) -> str:
    """Why the planned change would not fit in this kernel's env, and what to do; "" when it fits.

    The env's free space as ``statfs`` inside the container sees it (exact while mounted, unlike
    its superblock). The kernel has the env mounted, so growing it means shutting the kernel down.
    """
    stat = os.statvfs(ENV_PREFIX)
    image = info.get("writable_env") or ""
    name = next((o["name"] for o in info.get("overlays", []) if o.get("path") == image), "ENV")
    return txplan.space_refusal(
        plan,
        verb=verb,
        env=os.path.basename(image) or "this env",
        name=name,
        total_bytes=stat.f_blocks * stat.f_frsize,
        free_bytes=stat.f_bavail * stat.f_frsize,
        in_use=True,
    )


def _interrupted_message(verb: str, ended: bool) -> str:
    if not ended:
        return (
            f"%condatainer {verb} was interrupted, but mm-{verb} did not end even after SIGKILL and may "
            "still change the env; once it has ended, check the env with %condatainer list."
        )
    return (
        f"%condatainer {verb} was interrupted and mm-{verb} was stopped. The env is as mm-{verb} leaves it "
        "when interrupted; check it with %condatainer list (and %condatainer history)."
    )


def _no_writable_env_message(info: dict) -> str:
    return (
        "This kernel has no writable CondaTainer env, so packages cannot be installed here.\n"
        "Create one in the CondaTainer panel (tick 'register as kernel'), or from a terminal:\n"
        "  jupyter condatainer kernelspecs add myenv --overlay python/3.11 --env /path/to/myenv.img\n"
        "then start the kernel 'CondaTainer: myenv'."
        + (f"\n(this kernel's overlays: {', '.join(o['name'] for o in info.get('overlays', []))})" if info else "")
    )


def _recorded(cmd: list[str], request: str) -> list[str]:
    """The command wrapped so its revision records who asked for what (``kernel_provider.incontainer.history``)."""

    try:
        import pwd

        user = os.environ.get("USER") or pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        user = str(os.getuid())
    return history.recorded(cmd, request, user, "%condatainer")


class _CommandTree:
    """A command and every process it started, remembered as they are found in ``/proc``.

    The command stays in the kernel's process group (so a kernel that is killed takes it
    along); stopping it alone means signalling its tree, and children must still be found
    after their parent (the ``sh`` wrapper) has exited.
    """

    def __init__(self, process: subprocess.Popen):
        self.process = process
        self.pids = {process.pid}

    def running(self) -> set[int]:
        self.process.poll()  # reap the command once it has exited
        live = {pid for pid in self.pids if proctree.is_running(pid)}
        self.pids = live | set(proctree.descendants(*live))
        return self.pids

    def signal(self, signum: int) -> None:
        for pid in self.running():
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float) -> bool:
        """Whether all ended within ``timeout`` s; False at once if the cell is interrupted again."""
        deadline = time.monotonic() + timeout
        try:
            while self.running():
                if time.monotonic() >= deadline:
                    return False
                time.sleep(STOP_POLL_INTERVAL)
        except KeyboardInterrupt:
            return False
        return True


def stop_command(process: subprocess.Popen) -> bool:
    """Stop a command and everything it started, and reap it; True once none is left.

    The lock a command runs under may only be released after this: an ``mm-*`` still
    running would change the env while another operation does. SIGINT comes first, so
    ``mm-*`` ends the way it does on Ctrl-C in a terminal.
    """
    tree = _CommandTree(process)
    for signum, grace in STOP_STEPS:
        tree.signal(signum)
        if tree.wait(grace):
            return True
    return False


@contextmanager
def _stopped_when_interrupted(process: subprocess.Popen, argv: list[str]):
    """An interrupt of the cell while ``process`` runs stops it (:func:`stop_command`) and raises
    :class:`CommandInterrupted`."""
    try:
        yield
    except KeyboardInterrupt:
        print(f"\ninterrupted: stopping {history.command_label(argv)} (interrupt again to stop it harder)…", flush=True)
        raise CommandInterrupted(stop_command(process)) from None


def run_streaming(argv: list[str]) -> tuple[int, list[str]]:
    """Run a command, printing its output into the cell as it comes; an interrupt of the
    cell stops the command (:func:`stop_command`) before it raises :class:`CommandInterrupted`."""

    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines = []
    assert process.stdout is not None
    try:
        with _stopped_when_interrupted(process, argv):
            for line in process.stdout:
                lines.append(line.rstrip())
                print(line, end="", flush=True)
            return process.wait(), lines
    finally:
        process.stdout.close()


def run_quietly(argv: list[str]) -> tuple[int, str, str]:
    """Run a command, keeping its output: (exit code, stdout, stderr); an interrupt stops it as
    :func:`run_streaming`'s does."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with process, _stopped_when_interrupted(process, argv):
        out, err = process.communicate()
    return process.returncode, out, err


@magics_class
class CondaTainerMagics(Magics):
    """The ``%condatainer`` line magic; the launcher loads it into every CondaTainer kernel."""

    @line_magic
    def condatainer(self, line: str) -> None:
        """Run one ``%condatainer`` subcommand (replaced by :data:`USAGE` below, the help users see)."""
        args = shlex.split(line)
        if not args or args[0] in ("-h", "--help", "help"):
            print(USAGE)
            return
        verb, rest = args[0], args[1:]
        handler = {
            "info": self._info,
            "list": self._list,
            "install": self._change,
            "update": self._change,
            "remove": self._change,
            "overlays": self._overlays,
            "create": self._create,
            "history": self._history,
            "export": self._export,
            "apply": self._apply,
        }.get(verb)
        if handler is None:
            raise CondaTainerError(f"unknown subcommand {verb!r}\n\n{USAGE}")
        handler(verb, rest)

    condatainer.__doc__ = USAGE

    def _info(self, verb: str, args: list[str]) -> None:
        info = _info()
        if not info:
            print("This kernel is not running in a CondaTainer instance (no CONDATAINER_INFO).")
            return
        if info.get("oci"):  # SingularityCE's OCI mode: no instance, the kernel is its own container
            print(f"container:  {info['instance']} (OCI mode, no instance)")
        else:
            print(f"instance:   {info['instance']}{' (shared)' if info.get('shared') else ''}")
        print(f"runtime:    {info.get('apptainer_version', '?')}")
        print(f"base image: {info['base_image']}")
        print("overlays (in mount order):")
        for overlay in info.get("overlays", []):
            print(f"  {overlay['name']:<24} {overlay['mount']}")
            notes = info.get("notes", {}).get(overlay["name"], {})
            if notes.get("whatis"):
                print(f"      {notes['whatis']}")
            for key, note in notes.get("notes", {}).items():
                print(f"      {key}: {note}")
        env = info.get("writable_env")
        print(f"writable env: {env + ' at ' + ENV_PREFIX if env else 'none (read-only stack)'}")
        job = info.get("slurm")
        if job:
            print(f"SLURM job:  {job['job_id']} on {job['node']}, {_job_end(job.get('end_time'))}")

    def _list(self, verb: str, args: list[str]) -> None:
        pattern = args[0].lower() if args else ""
        records = [r for name, r in sorted(_conda_meta().items()) if pattern in name.lower()]
        if not records:
            print("no packages" + (f" matching {pattern!r}" if pattern else f" in {ENV_PREFIX}"))
            return
        print(f"{'name':<28} {'version':<14} {'build':<20} channel")
        for record in records:
            channel = history.short_channel(record.get("channel", ""))
            print(
                f"{record.get('name', ''):<28} {record.get('version', ''):<14} {record.get('build', ''):<20} {channel}"
            )

    _pending: tuple[str, list[str], tuple[int, int], dict] | None = None  # the last --dry-run: what apply does

    def _change(self, verb: str, args: list[str], plan: dict | None = None) -> None:
        """Make the change; an install or update is first planned (``plan``: already, by the
        ``--dry-run`` that ``apply`` makes) and refused when it would not fit in the env."""
        info = _info()
        if not os.environ.get("CNT_CONDA_PREFIX"):
            raise CondaTainerError(_no_writable_env_message(info))
        specs = _specs_of(args)
        if not specs and "--help" not in args:
            raise CondaTainerError(f"%condatainer {verb} needs at least one package spec")
        if "--dry-run" in args:
            self._preview(verb, [a for a in args if a != "--dry-run"])
            return
        self._pending = None
        if plan is None and verb != "remove" and "--help" not in args:  # a removal frees space
            plan = _plan(verb, args)  # before the lock: the solve takes a while and changes nothing
        before = _conda_meta()
        try:
            with _env_lock(info.get("env_lock")):
                refusal = _room_refusal(verb, plan, info) if plan is not None else ""
                if refusal:  # the space read under the lock: another change may have taken it meanwhile
                    raise CondaTainerError(refusal)
                returncode, lines = run_streaming(_recorded([f"mm-{verb}", "-y", *args], f"{verb} {' '.join(specs)}"))
        except CommandInterrupted as interrupt:
            raise CondaTainerError(_interrupted_message(verb, interrupt.ended)) from None
        if returncode != 0:
            raise CondaTainerError(_failure_line(f"mm-{verb}", returncode, "\n".join(lines)))
        _refresh_import_paths()
        self._restart_note(before, _conda_meta())

    def _preview(self, verb: str, args: list[str]) -> None:
        """Show the solver's plan for the change (``mm-VERB --dry-run --json``); nothing changes."""
        plan = _plan(verb, args)
        print("\n".join(txplan.format_plan(plan)))
        warning = _room_refusal(verb, plan, _info())
        if warning:
            print(f"Warning: {warning}")
        if txplan.is_empty(plan):
            self._pending = None
            return
        self._pending = (verb, args, _history_stamp(), plan)
        print(f"Nothing changed yet. Apply it with: %condatainer apply   (or %condatainer {verb} {shlex.join(args)})")

    def _apply(self, verb: str, args: list[str]) -> None:
        """The change the last ``--dry-run`` showed, if the env is still as it was then."""
        if self._pending is None:
            raise CondaTainerError(
                "nothing to apply: preview a change first, e.g. %condatainer install numpy --dry-run"
            )
        pending_verb, pending_args, stamp, plan = self._pending
        if stamp != _history_stamp():
            self._pending = None
            raise CondaTainerError(
                "the env changed since the preview, so its plan may no longer hold; preview the change again"
            )
        self._change(pending_verb, pending_args, plan)

    @staticmethod
    def _restart_note(before: dict[str, dict], after: dict[str, dict]) -> None:

        python = history.python_gained_note(_versions(before), _versions(after))
        if python:
            print(f"Note: {python}.")
        changed = [
            name
            for name, record in before.items()
            if name not in after
            or after[name].get("version") != record.get("version")
            or after[name].get("build") != record.get("build")
        ]
        stale = sorted(
            module for name in changed for module in _top_level_modules(before[name]) if module in sys.modules
        )
        if stale:
            print(f"Note: {', '.join(stale)} changed while imported; restart the kernel to use the new version.")

    def _create(self, verb: str, args: list[str]) -> None:
        """A new env: only the host can make an image, so the server that runs this kernel does it."""
        import argparse

        from . import server_link

        parser = argparse.ArgumentParser(prog="%condatainer create", add_help=False)
        parser.add_argument("name")
        parser.add_argument("specs", nargs="*")
        parser.add_argument("-c", "--channel", action="append", default=[])
        parser.add_argument("--size", type=int, default=1024)
        parser.add_argument("--no-kernel", action="store_true")
        try:
            options = parser.parse_args(args)
        except (argparse.ArgumentError, SystemExit) as err:
            raise CondaTainerError(f"{err}\n\n{USAGE}") from None
        from ipykernel.connect import get_connection_file

        body = {
            "name": options.name,
            "packages": options.specs,
            "channels": options.channel,
            "size_mb": options.size,
            "register_kernel": not options.no_kernel,
        }
        try:
            server = server_link.find_server(
                server_link.runtime_dirs(get_connection_file()), os.environ.get("JPY_PARENT_PID")
            )
            job = server_link.run_job(
                server, "POST", "condatainer/api/overlays", body, lambda line: print(line, flush=True)
            )
        except server_link.ServerLinkError as err:
            raise CondaTainerError(str(err)) from None
        if job["state"] != "succeeded":
            raise CondaTainerError(f"creating {options.name} {job['state']}: {job.get('error') or job.get('message')}")
        print(job.get("message") or f"created {options.name}")
        if not options.no_kernel:
            print(f"Switch to the kernel 'CondaTainer: {options.name} (env)' (Kernel → Change Kernel) to use it.")

    def _meta(self):

        if not os.path.isdir(os.path.join(ENV_PREFIX, "conda-meta")):
            raise CondaTainerError(
                f"no conda env at {ENV_PREFIX} in this kernel's stack\n\n" + _no_writable_env_message(_info())
            )
        return history.load_env_meta(ENV_PREFIX)

    def _history(self, verb: str, args: list[str]) -> None:

        revisions = self._meta().revisions()
        if "--json" in args:
            print(json.dumps([r.to_json() for r in revisions], indent=1))
            return
        print(history.format_history(revisions))

    def _export(self, verb: str, args: list[str]) -> None:
        import argparse

        parser = argparse.ArgumentParser(prog="%condatainer export", add_help=False)
        parser.add_argument("format", nargs="?", default="yml", choices=["yml", "lock"])
        parser.add_argument("--revision", "-r", type=int)
        parser.add_argument("-o", "--output")
        try:
            options = parser.parse_args(args)
        except (argparse.ArgumentError, SystemExit) as err:
            raise CondaTainerError(f"usage: %condatainer export [yml|lock] [--revision N] [-o FILE] ({err})") from None
        meta = self._meta()
        info = _info()
        name = os.path.basename(info.get("writable_env") or "env").rsplit(".", 1)[0].replace("--", "/")
        try:
            revision = history.select(meta.revisions(), options.revision)
            if options.format == "lock":
                text = history.render_explicit(name, revision, meta)
            else:
                text = history.render_environment_yml(name, revision, meta.channels, history.channel_alias(os.environ))
        except history.HistoryError as err:
            raise CondaTainerError(str(err)) from None
        if options.output:
            with open(options.output, "w", encoding="utf-8") as handle:
                handle.write(text)
            print(f"wrote {options.output} (revision {revision.number})")
        else:
            print(text, end="")

    def _overlays(self, verb: str, args: list[str]) -> None:
        info = _info()
        dirs = info.get("image_dirs", [])
        print("Images in the CondaTainer image directories:")
        for directory in dirs:
            try:
                entries = sorted(os.listdir(directory))
            except OSError:
                continue
            images = [e for e in entries if e.endswith((".sif", ".sqf", ".img"))]
            if images:
                print(f"  {directory}")
                for entry in images:
                    print(f"    {entry.rsplit('.', 1)[0].replace('--', '/'):<32} {entry}")
        print(
            "\nA kernel runs one fixed stack. To use other overlays, pick another 'CondaTainer: …' kernel, "
            "or add one:\n"
            "  jupyter condatainer kernelspecs add NAME --overlay python/3.11 --overlay OTHER [--env my.img]"
        )


def _show_error(shell, etype, value, tb, tb_offset=None) -> list[str]:
    """A :class:`CondaTainerError` as its message alone: the magic's own frames are no help to a user."""
    stb = [f"{etype.__name__}: {value}"]
    # IPython 9 leaves showing a custom handler's result to the handler: _showtraceback is what
    # its own showtraceback ends in (ipykernel sends the cell's error message from there).
    shell._showtraceback(etype, value, stb)
    return stb


def load_ipython_extension(ipython) -> None:
    """IPython's hook for ``--ext=kernel_provider.incontainer.magic``, which the launcher passes."""
    ipython.register_magics(CondaTainerMagics)
    ipython.set_custom_exc((CondaTainerError,), _show_error)
