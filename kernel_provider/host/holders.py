"""Who has an image open: the notebooks and kernels of our instances, or "another program".

"In use" alone does not tell a user what to close. Our instances' state files (any server of
this user) list each instance's images, its kernels and the notebooks they belong to, so an
image mounted by one of them is named by notebook. An image held by a program that is not ours
(``condatainer exec``, a plain ``apptainer exec``) is named by the process that holds the lock, found
in ``/proc``: Apptainer's OFD lock shows no PID in ``/proc/locks``, but the holder's ``fdinfo`` of
the image lists it. Only where that is not to be seen (another user's process) is it "another program".
"""

from __future__ import annotations

import os

from kernel_provider.host.state import InstanceRecord, Owner, StateStore
from kernel_provider.incontainer.diagnosis import ANOTHER_PROGRAM

MAX_NAMED = 3  # processes named in a refusal
COMMAND_WORDS = 120  # characters of a command line shown
RUNTIME_PARENTS = ("Apptainer runtime parent", "Singularity runtime parent")  # a container's own process


def _images(record: InstanceRecord) -> set[str]:
    """The image paths an instance mounts (its overlay arguments end in ``:ro``/``:rw``)."""
    paths = {record.base_image}
    for arg in record.overlays:
        path, _, mode = arg.rpartition(":")
        paths.add(path if mode in ("ro", "rw") else arg)
    return {os.path.realpath(p) for p in paths if p}


def kernels_in_words(record: InstanceRecord) -> str:
    """An instance's users in words: its notebooks, and kernels without one by id."""
    named = [os.path.basename(record.notebooks[k]) for k in record.kernels if record.notebooks.get(k)]
    unnamed = [k[:8] for k in record.kernels if not record.notebooks.get(k)]
    parts = []
    if named:
        parts.append(("the notebook " if len(named) == 1 else "the notebooks ") + ", ".join(named))
    if unnamed:
        parts.append(("the kernel " if len(unnamed) == 1 else "the kernels ") + ", ".join(unnamed))
    return " and ".join(parts) or f"the instance {record.name}"


def describe(record: InstanceRecord, me: Owner | None = None) -> str:
    """An instance in words: its notebooks (or kernels), and which server runs it unless it is ``me``."""
    who = kernels_in_words(record)
    me = me or Owner.current()
    if record.owner.pid != me.pid or record.owner.host != me.host:
        who += f" (Jupyter server pid {record.owner.pid} on {record.owner.host})"
    return who


def holders(store: StateStore, paths: list[str], exclude: str = "") -> dict[str, str]:
    """Image path → who has it mounted, for those of ``paths`` an instance of ours mounts
    (``exclude``: the instance that is asking, e.g. one whose start failed)."""
    wanted = {os.path.realpath(p): p for p in paths}
    found: dict[str, list[str]] = {}
    for record in store.ours():
        if record.name == exclude:
            continue
        for image in _images(record) & set(wanted):
            found.setdefault(wanted[image], []).append(describe(record))
    return {path: "; ".join(who) for path, who in found.items()}


def holder(store: StateStore, path: str) -> str:
    """Who has ``path`` open: our notebooks and kernels, else the program holding a lock on it
    (:func:`lock_holders`), else :data:`ANOTHER_PROGRAM`."""
    found = holders(store, [path]).get(path)
    if found:
        return found
    programs = [process_in_words(pid) for pid in lock_holders(path)[:MAX_NAMED]]
    return f"another program: {'; '.join(programs)}" if programs else ANOTHER_PROGRAM


def lock_holders(path: str, proc: str = "/proc") -> list[int]:
    """The processes, other than this one, that have ``path`` open and hold a lock on it (their
    ``fdinfo`` says ``lock:``), as far as ``/proc`` shows them (this user's, or everyone's to root)."""
    try:
        image = os.stat(path)
    except OSError:
        return []
    found = []
    for pid in sorted(int(entry) for entry in os.listdir(proc) if entry.isdigit()):
        if pid == os.getpid():
            continue
        try:
            fds = os.listdir(f"{proc}/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                opened = os.stat(f"{proc}/{pid}/fd/{fd}")
                if (opened.st_dev, opened.st_ino) != (image.st_dev, image.st_ino):
                    continue
                with open(f"{proc}/{pid}/fdinfo/{fd}", encoding="ascii", errors="replace") as handle:
                    if any(line.startswith("lock:") for line in handle):
                        found.append(pid)
                        break
            except OSError:
                continue
    return found


def _command(pid: int, proc: str) -> str:
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as handle:
            words = handle.read().rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
    return words if len(words) <= COMMAND_WORDS else words[: COMMAND_WORDS - 1] + "…"


def _parent(pid: int, proc: str) -> int:
    try:
        with open(f"{proc}/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def process_in_words(pid: int, proc: str = "/proc") -> str:
    """``pid 9319 (Apptainer runtime parent: base.sif), started by pid 9300 (condatainer exec …)``:
    a container's own process says little, so the program that started it is named too."""
    words = f"pid {pid} ({_command(pid, proc) or 'gone'})"
    parent = _parent(pid, proc)
    if parent > 1 and _command(pid, proc).startswith(RUNTIME_PARENTS):
        words += f", started by pid {parent} ({_command(parent, proc) or 'gone'})"
    return words
