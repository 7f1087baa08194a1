"""Where CondaTainer keeps things on this machine, as traitlets configuration.

Every trait can be set in ``jupyter_server_config.py`` (``c.CondaTainerConfig.distro =
"ubuntu24"``) and falls back to the ``CNT_*`` variables the CondaTainer CLI reads, so
the CLI and Jupyter find the same images.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from traitlets import Bool, Dict, Int, List, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from kernel_provider.incontainer.history import CHANNEL_ALIAS_VARIABLES

DEFAULT_DISTRO = "ubuntu24"
APPTAINER_INSTALL = "https://apptainer.org/docs/admin/main/installation.html"


def _home() -> Path:
    return Path(os.environ.get("HOME") or Path.home())


def _xdg(variable: str, fallback: str) -> Path:
    value = os.environ.get(variable)
    return Path(value) if value else _home() / fallback


def _split_dirs(value: str) -> list[str]:
    """CondaTainer separates directory lists with ``|`` (``:ro`` may end an entry)."""
    return [entry.strip() for entry in value.split("|") if entry.strip()]


def _strip_mode(entry: str) -> str:
    for mode in (":ro", ":rw"):
        if entry.endswith(mode):
            return entry[: -len(mode)]
    return entry


def _install_root() -> str:
    """CondaTainer's install root: ``$CNT_ROOT``, else ``<root>/bin/condatainer`` on PATH."""
    if os.environ.get("CNT_ROOT"):
        return os.path.abspath(os.path.expandvars(os.environ["CNT_ROOT"]))
    exe = shutil.which("condatainer")
    if not exe:
        return ""
    bin_dir = Path(os.path.realpath(exe)).parent
    root = bin_dir.parent
    excluded = {_home(), _home() / ".local", Path("/usr"), Path("/usr/local"), Path("/opt")}
    return str(root) if bin_dir.name == "bin" and root not in excluded else ""


def image_search_order() -> list[str]:
    """CondaTainer's image directories, highest priority first, de-duplicated."""
    candidates = [_strip_mode(entry) for entry in _split_dirs(os.environ.get("CNT_EXTRA_IMAGE_DIRS", ""))]
    if os.environ.get("CNT_EXTRA_ROOT"):
        candidates.append(os.path.join(os.environ["CNT_EXTRA_ROOT"], "images"))
    if root := _install_root():
        candidates.append(os.path.join(root, "images"))
    if os.environ.get("SCRATCH"):
        candidates.append(os.path.join(os.environ["SCRATCH"], "condatainer", "images"))
    candidates.append(str(_xdg("XDG_DATA_HOME", ".local/share") / "condatainer" / "images"))
    seen: dict[str, None] = {}
    for entry in candidates:
        seen.setdefault(os.path.abspath(os.path.expandvars(entry)), None)
    return list(seen)


class ApptainerNotFoundError(RuntimeError):
    """Neither ``apptainer`` nor ``singularity`` can be run."""


class CondaTainerConfig(LoggingConfigurable):
    """Paths and tools shared by the provisioner, kernelspecs, server and magic."""

    image_dirs = List(
        Unicode(),
        config=True,
        help="""Image directories in search order (first match wins). Default: CondaTainer's
        order — $CNT_EXTRA_IMAGE_DIRS ('|'-separated), $CNT_EXTRA_ROOT/images,
        $CNT_ROOT/images, $SCRATCH/condatainer/images, $XDG_DATA_HOME/condatainer/images.""",
    )

    @default("image_dirs")
    def _default_image_dirs(self) -> list[str]:
        return image_search_order()

    @validate("image_dirs")
    def _absolute_image_dirs(self, proposal) -> list[str]:
        return [os.path.abspath(os.path.expanduser(d)) for d in proposal["value"]]

    distro = Unicode(
        config=True,
        help="Distro prefix of the base image '<distro>--base_image.sif'. Default: $CNT_DEFAULT_DISTRO or 'ubuntu24'.",
    )

    @default("distro")
    def _default_distro(self) -> str:
        return os.environ.get("CNT_DEFAULT_DISTRO") or DEFAULT_DISTRO

    apptainer_bin = Unicode(
        config=True,
        help="Apptainer executable. Default: $CNT_APPTAINER_BIN, else 'apptainer', else 'singularity' on PATH.",
    )

    @default("apptainer_bin")
    def _default_apptainer_bin(self) -> str:
        configured = os.environ.get("CNT_APPTAINER_BIN", "")
        return configured or shutil.which("apptainer") or shutil.which("singularity") or ""

    oci = Bool(
        False,
        config=True,
        help="""Run every container — kernels and env changes — in SingularityCE's OCI mode
        (exec --oci; no instances, ipc transport only). SingularityCE's own 'oci mode = yes'
        does the same; a kernel can also ask for it alone (its 'oci' option or --oci flag).""",
    )

    extra_binds = List(
        Unicode(),
        config=True,
        help="Bind paths added to every container ('/src' or '/src:/dst[:ro]'), after CondaTainer's defaults.",
    )

    container_env = Dict(
        value_trait=Unicode(),
        config=True,
        help="""Variables set in every container we start, after CondaTainer's own (containers run
        with --cleanenv, so nothing else of the host gets in). Default: the host's
        MAMBA_CHANNEL_ALIAS / CONDA_CHANNEL_ALIAS, if set — a site conda mirror. A file:// value
        that names a local directory is also bound into the container.""",
    )

    @default("container_env")
    def _default_container_env(self) -> dict[str, str]:
        return {key: os.environ[key] for key in CHANNEL_ALIAS_VARIABLES if os.environ.get(key)}

    def container_binds(self) -> list[str]:
        """Extra binds plus the local directories named by ``file://`` container variables."""
        local = [v[len("file://") :] for v in self.container_env.values() if v.startswith("file://")]
        return list(self.extra_binds) + [path for path in local if os.path.isdir(path)]

    state_dir = Unicode(
        config=True,
        help="CondaTainer's state directory (instance state files). Default: $XDG_STATE_HOME/condatainer.",
    )

    @default("state_dir")
    def _default_state_dir(self) -> str:
        return str(_xdg("XDG_STATE_HOME", ".local/state") / "condatainer")

    max_env_size_mb = Int(
        65536,
        config=True,
        help="""Largest env (.img) a create may ask for, in MB. The image can grow to this size,
        so a request beyond it (or beyond the free space of the image directory) is refused
        before anything is written.""",
    )
    min_free_mb = Int(
        512,
        config=True,
        help="""Free space (MB) an image directory must keep after an env operation has made its
        working copy or reserved a new env's full size; operations that would leave less are
        refused before they start.""",
    )
    sparse_envs = Bool(
        True,
        config=True,
        help="""Create env images sparse (apptainer overlay create --sparse): a 64 GB env takes only
        what its packages use. Turn off on filesystems where sparse files are unsafe or slow.""",
    )

    def require_apptainer(self) -> str:
        """The Apptainer executable, or a clear error that says how to get one."""
        binary = self.apptainer_bin
        resolved = shutil.which(binary) if binary else None
        if not resolved:
            raise ApptainerNotFoundError(
                f"Apptainer not found ({binary or 'neither apptainer nor singularity is on PATH'}). Install it "
                f"({APPTAINER_INSTALL}) or load its module (module load apptainer), or set CNT_APPTAINER_BIN "
                "(c.CondaTainerConfig.apptainer_bin) to its path, then restart Jupyter."
            )
        return resolved

    @property
    def base_image_filename(self) -> str:
        """The file CondaTainer looks for as this distro's base image."""
        return f"{self.distro}--base_image.sif"

    @property
    def instance_state_dir(self) -> Path:
        """CondaTainer's own instance state files (the code uses ``instance/``)."""
        return Path(self.state_dir) / "instance"
