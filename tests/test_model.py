"""Unit tests of the CondaTainer model: names, overlays, env, binds, plan and argv."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import Facts, placeholder_images

from kernel_provider.host.config import CondaTainerConfig, image_search_order
from kernel_provider.model import binds, command, envfile, flavour, names
from kernel_provider.model.overlays import (
    Overlay,
    OverlayError,
    OverlayNotFoundError,
    resolve,
    scan,
)
from kernel_provider.model.plan import (
    BaseImageNotFoundError,
    StackRequest,
    plan_container,
)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return placeholder_images(
        tmp_path / "images",
        [
            "ubuntu24--base_image.sif",
            "python--3.9.sqf",
            "python--3.10.sqf",
            "python--3.11.sqf",
            "samtools--1.16.sqf",
            "samtools--1.21.sqf",
            "hello--1.0.sqf",
            "genome--hg38--star.sqf",
            "env.img",
            "other.img",
            "ubuntu24--gcc--12.sqf",
        ],
    )


@pytest.fixture
def catalog(images):
    return scan([str(images)], distro="ubuntu24")


def plan(catalog, *specs, facts=None, environ=None, cwd="/", uid=1000, **kw):
    return plan_container(
        StackRequest(overlays=list(specs), **kw), catalog, facts or Facts(), environ=environ or {}, cwd=cwd, uid=uid
    )


# --- names -----------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["python/3.11", "python=3.11", "python@3.11", "python--3.11", " python/3.11 "])
def test_delimiters_normalise_to_one_name(spec):
    assert names.normalize(spec) == "python/3.11"


@pytest.mark.parametrize("bad", ["../x", "a/../b", "a;rm -rf", "$(id)", "a b", "", "/abs", "x/", "`id`"])
def test_invalid_names_are_rejected(bad):
    with pytest.raises(names.InvalidNameError):
        names.normalize(bad)


def test_filename_round_trip():
    assert names.name_from_filename("python--3.11.sqf") == "python/3.11"
    assert names.filename_for("python/3.11") == "python--3.11.sqf"
    assert names.name_from_filename("genome--hg38--star.sqf") == "genome/hg38/star"
    assert names.name_from_filename("env.img") == "env"


def test_natural_version_order_matches_condatainer():
    versions = ["3.9", "3.11", "3.10", "2", "3.10.1", "10"]
    assert sorted(versions, key=names.version_key) == ["2", "3.9", "3.10", "3.10.1", "3.11", "10"]


def test_constraint_split_and_satisfaction():
    assert names.split_constraint("samtools/1.21>=1.16") == ("samtools/1.21", ">=", "1.16")
    assert names.satisfies("1.16.0", ">=", "1.16")
    assert not names.satisfies("1.16", ">", "1.16")
    assert not names.satisfies("1.22", ">=", "1.16", preferred="1.21")


# --- scanning and resolution ------------------------------------------------------------


def test_scan_finds_every_kind(catalog):
    assert catalog.by_name["python/3.11"].kind == "sqf"
    assert catalog.by_name["env"].kind == "img"
    assert catalog.by_name["ubuntu24/base_image"].kind == "sif"


def test_first_directory_wins(tmp_path, images):
    first = tmp_path / "first"
    first.mkdir()
    (first / "python--3.11.sqf").write_bytes(b"")
    catalog = scan([str(first), str(images)])
    assert catalog.by_name["python/3.11"].path == str(first / "python--3.11.sqf")


def test_missing_directories_are_skipped(tmp_path, images):
    catalog = scan([str(tmp_path / "nope"), str(images)])
    assert "python/3.11" in catalog.by_name


@pytest.mark.parametrize("spec", ["python/3.11", "python=3.11", "python@3.11", "python--3.11"])
def test_resolve_by_name(catalog, images, spec):
    assert resolve(spec, catalog).path == str(images / "python--3.11.sqf")


def test_bare_name_resolves_to_newest_version(catalog, images):
    assert resolve("python", catalog).path == str(images / "python--3.11.sqf")
    assert resolve("samtools", catalog).name == "samtools/1.21"


def test_constraint_picks_highest_satisfying_not_above_preferred(catalog):
    assert resolve("samtools/1.16>=1.10", catalog).name == "samtools/1.16"
    assert resolve("python/3.10>=3.9", catalog).name == "python/3.10"


def test_default_distro_alias(catalog):
    assert resolve("gcc/12", catalog).name == "ubuntu24/gcc/12"


def test_explicit_relative_and_absolute_paths(catalog, images):
    assert resolve("env.img", catalog, cwd=str(images)).path == str(images / "env.img")
    assert resolve(str(images / "hello--1.0.sqf"), catalog).name == "hello/1.0"


def test_missing_path_is_an_error(catalog, tmp_path):
    with pytest.raises(OverlayError, match="The image missing.img is missing"):
        resolve("./missing.img", catalog, cwd=str(tmp_path))


def test_unknown_name_lists_close_matches(catalog):
    with pytest.raises(OverlayNotFoundError) as err:
        resolve("python/3.12", catalog)
    assert "python/3.11" in err.value.suggestions
    assert "Did you mean" in str(err.value)
    with pytest.raises(OverlayNotFoundError) as err:
        resolve("pyton/3.11", catalog)
    assert "python/3.11" in err.value.suggestions


def test_base_image_is_not_an_overlay_name(catalog):
    with pytest.raises(OverlayNotFoundError):
        resolve("ubuntu24/base_image", catalog)


def test_mode_suffix_is_kept(catalog, images):
    overlay = resolve("env.img:rw", catalog, cwd=str(images))
    assert overlay.mount_arg(writable=False) == str(images / "env.img") + ":rw"


def test_mount_modes():
    sqf = Overlay.from_path("/i/a--1.sqf")
    img = Overlay.from_path("/i/e.img")
    assert sqf.mount_arg(True) == "/i/a--1.sqf:ro"
    assert img.mount_arg(True) == "/i/e.img:rw"
    assert img.mount_arg(False) == "/i/e.img:ro"


def test_from_path_rejects_other_files():
    with pytest.raises(OverlayError, match="not an image"):
        Overlay.from_path("/i/notes.txt")


# --- sidecars ---------------------------------------------------------------------------

SIDECAR = """#WHATIS:hello 1.0 - a tiny test tool
HELLO_HOME=$app_root
HELLO_GREETING=hi from $HELLO_HOME
#ENVNOTE:HELLO_HOME=root of the hello tool
# a comment
not a pair
 =no key
"""


def test_sidecar_parsing():
    env = envfile.parse_sidecar(SIDECAR, "/cnt/hello/1.0")
    assert env.whatis == "hello 1.0 - a tiny test tool"
    assert env.variables == {"HELLO_HOME": "/cnt/hello/1.0", "HELLO_GREETING": "hi from $HELLO_HOME"}
    assert env.notes == {"HELLO_HOME": "root of the hello tool"}


def test_references_between_overlay_variables_expand_others_stay():
    expanded = envfile.expand_references(
        {
            "GREETING": "hi from ${HOME_DIR}",
            "HOME_DIR": "$ROOT/x",
            "ROOT": "/cnt/t/1",
            "P": "$ROOT/bin:$PATH",
            "S": "$S:x",
        }
    )
    assert expanded == {
        "GREETING": "hi from /cnt/t/1/x",
        "HOME_DIR": "/cnt/t/1/x",
        "ROOT": "/cnt/t/1",
        "P": "/cnt/t/1/bin:$PATH",
        "S": "$S:x",
    }


def test_build_script_headers_and_sidecar_shadowing():
    script = "#!/bin/bash\n#WHATIS:embedded\n#ENV:TOOL_ROOT=$app_root # inline\n#ENVNOTE:where it lives\n#ENV:X=1\n"
    embedded = envfile.parse_build_script(script, "/cnt/t/1")
    assert embedded.variables == {"TOOL_ROOT": "/cnt/t/1", "X": "1"}
    assert embedded.notes == {"TOOL_ROOT": "where it lives"}
    merged = embedded.shadowed_by(envfile.OverlayEnv("", {"X": "2"}, {}))
    assert merged.whatis == "embedded" and merged.variables["X"] == "2"


# --- environment ------------------------------------------------------------------------


def test_path_order_last_overlay_first_env_bin_first(catalog, images):
    p = plan(catalog, "hello/1.0", "env.img", "python/3.11", cwd=str(images))
    assert p.env_dict["PATH"] == "/ext3/env/bin:/cnt/python/3.11/bin:/cnt/hello/1.0/bin:$PATH"


def test_overlay_without_bin_and_data_overlays_add_nothing_to_path(catalog):
    p = plan(catalog, "hello/1.0", "genome/hg38/star", facts=Facts(without_bin={"hello/1.0"}))
    assert p.env_dict["PATH"] == "$PATH"


def test_fixed_variables(catalog):
    env = plan(catalog, "python/3.11").env_dict
    assert env["IN_CONDATAINER"] == "1"
    assert env["LC_ALL"] == env["LANG"] == "C.UTF-8"
    assert "CONDA_PREFIX" not in env


def test_nested_condatainer_layer(catalog):
    env = plan(catalog, "python/3.11", environ={"IN_CONDATAINER": "1"}).env_dict
    assert env["IN_CONDATAINER"] == "2"
    assert env["PS1"].startswith("CNT_2 ")


def test_conda_variables_with_img(catalog, images):
    ro = plan(catalog, "env.img", cwd=str(images)).env_dict
    rw = plan(catalog, "env.img", cwd=str(images), writable=True).env_dict
    assert ro["CONDA_PREFIX"] == ro["MAMBA_ROOT_PREFIX"] == "/ext3/env"
    assert "CNT_CONDA_PREFIX" not in ro
    assert rw["CNT_CONDA_PREFIX"] == "/ext3/env"


def test_overlay_variables_sorted_later_overlay_wins_and_notes(catalog):
    facts = Facts(
        envs={
            "hello/1.0": envfile.OverlayEnv("h", {"B": "1", "SHARED": "hello"}, {"B": "note b"}),
            "python/3.11": envfile.OverlayEnv("p", {"A": "2", "SHARED": "python"}, {}),
        }
    )
    p = plan(catalog, "hello/1.0", "python/3.11", facts=facts)
    keys = [k for k, _ in p.env]
    assert keys[:3] == ["A", "B", "SHARED"]
    assert p.env_dict["SHARED"] == "python"
    assert p.notes == {"A": "2", "B": "note b", "SHARED": "python"}
    assert any("SHARED" in d.message for d in p.diagnostics)


def test_user_env_comes_last_and_overrides(catalog):
    p = plan(catalog, "python/3.11", env={"LANG": "en_US.UTF-8", "FOO": "bar"})
    assert p.env[-2:] == (("LANG", "en_US.UTF-8"), ("FOO", "bar"))
    assert p.env_dict["LANG"] == "en_US.UTF-8"


# --- stack rules ------------------------------------------------------------------------


def test_img_goes_last(catalog, images):
    p = plan(catalog, "env.img", "python/3.11", cwd=str(images))
    assert [o.kind for o in p.overlays] == ["sqf", "img"]
    assert p.env_image.name == "env"


def test_two_imgs_are_refused(catalog, images):
    with pytest.raises(OverlayError, match="only one .img overlay is allowed, found 2"):
        plan(catalog, "env.img", "other.img", cwd=str(images))


def test_sif_as_overlay_is_refused(catalog, images):
    with pytest.raises(OverlayError, match="base image"):
        plan(catalog, str(images / "ubuntu24--base_image.sif"))


def test_missing_base_image_says_what_to_do(tmp_path):
    catalog = scan([str(tmp_path)], distro="ubuntu24")
    with pytest.raises(BaseImageNotFoundError, match="ubuntu24--base_image.sif not found.*build-images"):
        plan(catalog)


def test_explicit_base_image(catalog, images):
    p = plan(catalog, "python/3.11", base_image=str(images / "ubuntu24--base_image.sif"))
    assert p.base_image.kind == "sif"
    with pytest.raises(OverlayError, match="must be a .sif"):
        plan(catalog, base_image=str(images / "hello--1.0.sqf"))
    with pytest.raises(BaseImageNotFoundError):
        plan(catalog, base_image="/nonexistent.sif")


def test_gpu_flags(catalog):
    assert plan(catalog, facts=Facts(devices={"/dev/nvidiactl"})).flags == ("--nv",)
    assert plan(catalog, facts=Facts(devices={"/dev/nvidiactl", "/dev/kfd"}), flags=["--no-home"]).flags == (
        "--nv",
        "--rocm",
        "--no-home",
    )
    assert plan(catalog).flags == ()


@pytest.mark.parametrize(
    ("owner", "uid", "writable", "expected"),
    [
        (0, 1000, True, True),
        (2000, 1000, True, True),
        (1000, 1000, True, False),
        (0, 1000, False, False),
        (None, 1000, True, False),
        (0, 0, True, False),
    ],
)
def test_auto_fakeroot_for_foreign_img(catalog, images, owner, uid, writable, expected):
    facts = Facts(owners={} if owner is None else {"env": owner})
    p = plan(catalog, "env.img", cwd=str(images), facts=facts, uid=uid, writable=writable)
    assert p.fakeroot is expected


# --- binds ------------------------------------------------------------------------------


def test_default_binds_only_existing(tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    environ = {"SCRATCH": str(scratch), "TMPDIR": str(tmp_path / "gone")}
    assert binds.default_binds(environ, str(tmp_path), [str(tmp_path / "img")]) == [str(tmp_path), str(scratch)]


def test_dedupe_binds_drops_children_and_repeats(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    a, b = str(tmp_path / "a"), str(tmp_path / "a" / "b")
    assert binds.dedupe_binds([b, a, a, ""]) == [a]


def test_dedupe_binds_resolves_symlinks(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert binds.dedupe_binds([str(tmp_path / "link"), str(real)]) == [str(real)]


def test_dedupe_binds_keeps_remaps(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    a, b = str(tmp_path / "a"), str(tmp_path / "a" / "b")
    assert binds.dedupe_binds([a, f"{b}:/data:ro"]) == [a, f"{b}:/data:ro"]


def test_plan_binds_include_cwd_image_dirs_and_extra(catalog, images, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    p = plan(catalog, cwd=str(work), binds=[f"{images}:/images"])
    assert str(work) in p.binds and str(images) in p.binds and f"{images}:/images" not in p.binds


# --- argv -------------------------------------------------------------------------------


def test_instance_start_argv(catalog, images):
    p = plan(
        catalog,
        "python/3.11",
        "env.img",
        cwd=str(images),
        writable=True,
        facts=Facts(devices={"/dev/nvidiactl"}, owners={"env": 0}),
    )
    argv = command.instance_start_argv("/usr/bin/apptainer", p, "jct-x", "/run/x.env")
    assert argv[:4] == ["/usr/bin/apptainer", "instance", "start", "--nv"]
    assert "--fakeroot" in argv
    assert argv[argv.index("--bind") + 1] == str(images)
    overlays = [argv[i + 1] for i, a in enumerate(argv) if a == "--overlay"]
    assert overlays == [str(images / "python--3.11.sqf") + ":ro", str(images / "env.img") + ":rw"]
    assert argv[-5:] == ["--cleanenv", "--env-file", "/run/x.env", str(images / "ubuntu24--base_image.sif"), "jct-x"]


def test_instance_exec_argv():
    assert command.instance_exec_argv("apptainer", "jct-x", "/e", ["python", "-c", "1"], pwd="/w") == [
        "apptainer",
        "exec",
        "--cleanenv",
        "--env-file",
        "/e",
        "--pwd",
        "/w",
        "instance://jct-x",
        "python",
        "-c",
        "1",
    ]


def test_oneshot_exec_argv(catalog, images):
    p = plan(catalog, "env.img", cwd=str(images), writable=True)
    argv = command.oneshot_exec_argv("apptainer", p, "/e", ["mm-install", "-y", "numpy"])
    assert argv[:2] == ["apptainer", "exec"]
    assert argv[-4:] == [str(images / "ubuntu24--base_image.sif"), "mm-install", "-y", "numpy"]


def test_a_stack_terminal_is_a_quiet_oneshot_of_the_shell_with_the_env_read_only(catalog, images):
    from kernel_provider.envs.operations import OneShot
    from kernel_provider.incontainer.constants import SHELL
    from kernel_provider.kernel.stackshell import shell_argv

    p = plan(catalog, "env.img", cwd=str(images))
    argv = shell_argv(OneShot("apptainer", p, Path("/e"), oci=False), "/root", "first line")
    base, env = str(images / "ubuntu24--base_image.sif"), str(images / "env.img")
    locks = ["flock", "--shared", "--nonblock"]
    assert argv[:11] == [*locks, base, *locks, env, "apptainer", "--quiet", "exec"]
    assert f"{images / 'env.img'}:ro" in argv
    assert argv[-8:] == [
        "--env-file",
        "/e",
        "--pwd",
        "/root",
        str(images / "ubuntu24--base_image.sif"),
        "python",
        SHELL,
        "first line",
    ]


def test_stop_and_list_argv():
    assert command.instance_stop_argv("a", "n") == ["a", "instance", "stop", "n"]
    assert command.instance_stop_argv("a", "n", force=True) == ["a", "instance", "stop", "--force", "n"]
    assert command.instance_list_argv("a") == ["a", "instance", "list", "--json"]


def test_env_file_is_single_quoted_so_the_container_expands_references():
    text = command.render_env_file([("A", 'say "hi"'), ("P", "/x/bin:$PATH"), ("B", "it's")])
    assert text == "A='say \"hi\"'\nP='/x/bin:$PATH'\nB='it'\\''s'\n"


@pytest.mark.parametrize(("uid", "capbnd", "expected"), [(0, 0, True), (0, 1 << 24, False), (1000, 0, False)])
def test_drop_caps_only_for_root_without_cap_sys_resource(uid, capbnd, expected):
    env = command.apptainer_process_env({"HOME": "/root"}, uid, capbnd)
    assert (env.get("APPTAINER_DROP_CAPS") == "CAP_SYS_RESOURCE") is expected


def test_singularityce_gets_its_own_drop_caps_variable():
    env = command.apptainer_process_env({"HOME": "/root"}, 0, 0, flavour.SINGULARITYCE)
    assert env["SINGULARITY_DROP_CAPS"] == "CAP_SYS_RESOURCE" and "APPTAINER_DROP_CAPS" not in env


@pytest.mark.parametrize(
    ("output", "binary", "expected"),
    [
        ("apptainer version 1.4.5\n", "/usr/bin/singularity", ("Apptainer", "1.4.5")),  # Apptainer's link
        ("singularity-ce version 4.5.1\n", "/opt/x/bin/singularity", ("SingularityCE", "4.5.1")),
        ("singularity version 3.8.7\n", "singularity", ("SingularityCE", "3.8.7")),
        ("", "/site/bin/singularity", ("SingularityCE", "")),  # unknown output: CondaTainer's name rule
        ("", "/site/bin/apptainer", ("Apptainer", "")),
    ],
)
def test_flavour_and_version_from_the_binary(output, binary, expected):
    found, version = flavour.parse_version(output, binary)
    assert (found.name, version) == expected


def test_oci_mode_from_option_flags_or_the_runtimes_config():
    conf = "# oci mode = yes\noci mode = yes # every run\n"
    assert flavour.oci_mode_from_config(conf) and not flavour.oci_mode_from_config("oci mode = no\n")
    sce = flavour.Runtime("/s", flavour.SINGULARITYCE, "4.5.1")
    assert not sce.oci_mode() and sce.oci_mode(option=True) and sce.oci_mode(["--oci"])
    by_default = flavour.Runtime("/s", flavour.SINGULARITYCE, "4.5.1", oci_by_default=True)
    assert by_default.oci_mode() and not by_default.oci_mode(["--no-oci"], option=True)
    assert sce.oci_problem() is None
    assert "needs SingularityCE" in flavour.Runtime("/a", flavour.APPTAINER, "1.4.5").oci_problem()


def test_oci_exec_argv_and_env_file(catalog, images):
    p = plan(catalog, "python/3.11", cwd=str(images))
    p = type(p)(**{**p.__dict__, "flags": ("--oci", "--nv")})
    argv = command.oneshot_exec_argv("singularity", p, "/e", ["python"], oci=True)
    assert argv[:4] == ["singularity", "exec", "--oci", "--nv"] and argv.count("--oci") == 1
    # OCI mode sets env-file values literally: references are resolved here, line by line.
    text = command.render_env_file([("P", "/x/bin:$PATH"), ("Q", "${P}:$NOPE"), ("PATH", "/y:$PATH")], oci=True)
    default_path = command.OCI_BASE_ENV["PATH"]
    assert text.splitlines() == [
        f"P='/x/bin:{default_path}'",
        f"Q='/x/bin:{default_path}:'",
        f"PATH='/y:{default_path}'",
    ]


# --- configuration ----------------------------------------------------------------------


def test_search_order_follows_condatainer(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CNT_EXTRA_IMAGE_DIRS", "/lab/a|/lab/b:ro")
    monkeypatch.setenv("CNT_EXTRA_ROOT", "/group")
    monkeypatch.setenv("CNT_ROOT", "/apps/cnt")
    monkeypatch.setenv("SCRATCH", "/scratch/me")
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    assert image_search_order() == [
        "/lab/a",
        "/lab/b",
        "/group/images",
        "/apps/cnt/images",
        "/scratch/me/condatainer/images",
        str(tmp_path / ".local/share/condatainer/images"),
    ]


def test_config_traits_from_env_and_config(monkeypatch, tmp_path):
    monkeypatch.setenv("CNT_DEFAULT_DISTRO", "ubuntu22")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("CNT_APPTAINER_BIN", "/opt/apptainer/bin/apptainer")
    cfg = CondaTainerConfig()
    assert cfg.base_image_filename == "ubuntu22--base_image.sif"
    assert cfg.instance_state_dir == tmp_path / "state" / "condatainer" / "instance"
    assert cfg.apptainer_bin == "/opt/apptainer/bin/apptainer"
    from traitlets.config import Config

    c = Config()
    c.CondaTainerConfig.image_dirs = ["~/imgs"]
    assert CondaTainerConfig(config=c).image_dirs == [os.path.expanduser("~/imgs")]


def test_missing_apptainer_is_a_clear_error(monkeypatch):
    cfg = CondaTainerConfig(apptainer_bin="/nonexistent/apptainer")
    from kernel_provider.host.config import ApptainerNotFoundError

    with pytest.raises(ApptainerNotFoundError, match="Apptainer not found.*CNT_APPTAINER_BIN"):
        cfg.require_apptainer()


def test_supply_pip_targets_the_containers_python_and_glibc():
    from kernel_provider.host import supply

    argv = supply.pip_argv((3, 12), "/t", glibc="2.19", machine="x86_64")
    assert argv[argv.index("--python-version") + 1] == "3.12"
    assert argv[argv.index("--abi") + 1] == "cp312"
    platforms = [argv[i + 1] for i, a in enumerate(argv) if a == "--platform"]
    assert platforms == [
        "manylinux2014_x86_64",
        "manylinux_2_17_x86_64",
        "manylinux_2_18_x86_64",
        "manylinux_2_19_x86_64",
    ]
    assert argv[-1] == "ipykernel" and "--only-binary=:all:" in argv


def test_hidden_work_files_are_not_images(tmp_path):
    (tmp_path / ".env.123-456.abc.tmp.img").write_bytes(b"")
    (tmp_path / ".env.img.snapshot").write_bytes(b"")
    (tmp_path / "env.img").write_bytes(b"")
    assert set(scan([str(tmp_path)]).by_name) == {"env"}


def test_recover_removes_what_dead_builders_left_and_never_touches_an_env(tmp_path, monkeypatch):
    from kernel_provider.envs.operations import EnvOperations
    from kernel_provider.host.state import Owner

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    me = Owner.current()
    dead = [
        tmp_path / ".gone.999999-1.abcdef.tmp.img",
        tmp_path / ".gone.999999-1.abcdef.tmp.img.ext3",  # apptainer overlay create's own file
        tmp_path / ".env.999999-1.abcdef.tmp.img",  # a copy an install was changing
        tmp_path / ".frozen--1.0.999999-1.abcdef.tmp.sqf",
    ]
    alive = tmp_path / f".busy.{me.pid}-{me.start_time}.abcdef.tmp.img"
    for path in (*dead, alive):
        path.write_bytes(b"work")
    stage = tmp_path / ".frozen--1.0.999999-1.abcdef.tmp.stage"
    (stage / "root").mkdir(parents=True)
    # A freeze killed between linking its sidecar and its image: the lone sidecar goes too.
    lone_sidecar_work = tmp_path / ".frozen--1.0.999999-1.abcdef.tmp.sqf.env"
    lone_sidecar_work.write_text("#WHATIS:frozen\n")
    os.link(lone_sidecar_work, tmp_path / "frozen--1.0.sqf.env")
    (tmp_path / "env.img").write_bytes(b"the env")
    (tmp_path / ".env.img.snapshot").write_bytes(b"older version's snapshot")
    operations = EnvOperations(CondaTainerConfig(image_dirs=[str(tmp_path)]))

    recovery = operations.recover()

    assert not any(p.exists() for p in dead) and not stage.exists() and alive.exists()
    assert not (tmp_path / "frozen--1.0.sqf.env").exists()
    assert (tmp_path / "env.img").read_bytes() == b"the env"  # never restored from anything
    assert len(recovery.removed) == 6
    assert (tmp_path / ".env.img.snapshot").exists() and "not restored" in recovery.outcomes[-1]


def test_the_journal_tells_what_became_of_an_interrupted_operation(tmp_path):
    from kernel_provider.envs.journal import Entry, Journal

    env, fresh = tmp_path / "env.img", tmp_path / "fresh.img"
    env.write_bytes(b"before")
    journal = Journal(tmp_path / "journal")
    with journal.record("install", "env", str(env)) as entry:
        assert list(journal.interrupted()) == []  # its writer (this process) is alive
        assert entry.outcome().endswith("env is as it was before")
        changed = tmp_path / "changed"
        changed.write_bytes(b"after")
        os.rename(changed, env)  # the commit
        assert entry.outcome().endswith("it had finished: env holds the finished result")
    assert list((tmp_path / "journal").iterdir()) == []

    dead = Entry("create", "fresh", str(fresh), None, 999999, 1, os.uname().nodename)
    assert dead.outcome().endswith("nothing was created")
    fresh.write_bytes(b"")
    assert dead.outcome().endswith("it had finished: fresh is complete")
    deleted = Entry("delete", "env", str(tmp_path / "gone.img"), 1, 999999, 1, os.uname().nodename)
    assert deleted.outcome().endswith("it had finished: env is deleted")
    in_a_kernel = Entry("install", "env", str(env), env.stat().st_ino, 999999, 1, os.uname().nodename, in_place=True)
    assert "it goes on there to its end" in in_a_kernel.outcome()


def test_env_lock_is_private_exclusive_and_removed_when_released(tmp_path):
    import threading

    from kernel_provider.incontainer.envlock import EnvBusyError, EnvLock

    path = tmp_path / "state" / "locks" / "x.lock"
    first = EnvLock(str(path)).acquire()
    assert os.stat(path.parent).st_mode & 0o777 == 0o700 and os.stat(path).st_mode & 0o777 == 0o600
    with pytest.raises(EnvBusyError):
        EnvLock(str(path)).acquire()
    # A waiter blocked on the old file must notice it was unlinked and lock the new one.
    waiter, got = EnvLock(str(path)), threading.Event()
    thread = threading.Thread(target=lambda: (waiter.acquire(blocking=True), got.set()))
    thread.start()
    first.release()
    thread.join(timeout=10)
    assert got.is_set() and waiter.held and path.exists()
    with pytest.raises(EnvBusyError):
        EnvLock(str(path)).acquire()
    waiter.release()
    assert not path.exists()


def test_ipc_falls_back_to_tcp_when_the_socket_path_would_be_too_long(tmp_path, monkeypatch):
    from jupyter_client.manager import KernelManager

    from kernel_provider.kernel.provisioner import CondaTainerProvisioner

    def transport_with_runtime(directory):
        monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(directory))
        km = KernelManager()
        provisioner = CondaTainerProvisioner(kernel_id="0123456789abcdef", kernel_spec=None, parent=km)
        provisioner._use_ipc()
        return km.transport

    assert transport_with_runtime(tmp_path / "rt") == "ipc"
    assert transport_with_runtime(tmp_path / ("x" * 90)) == "tcp"


def test_the_magic_tells_specs_from_option_values():
    from kernel_provider.incontainer.magic import _specs_of

    assert _specs_of(["numpy", "-c", "conda-forge", "--dry-run"]) == ["numpy"]
    assert _specs_of(["-c", "file:///data/channel"]) == []
    assert _specs_of(["--channel", "x", "a", "b>=1"]) == ["a", "b>=1"]


def test_a_terminals_env_file_names_the_server_that_opened_it():
    from kernel_provider.host.state import Owner
    from kernel_provider.kernel.stackshell import env_file_name, env_file_owner

    owner = Owner(4242, 987654, "login-1.cluster-a.example")
    name = env_file_name(owner)
    assert name.startswith("terminal-4242-987654-") and name.endswith("-login-1.cluster-a.example.env")
    assert env_file_owner(name) == owner
    assert env_file_owner("terminal-0123456789ab.env") is None  # an older name: no owner to judge
    assert env_file_owner("kernel-4242-987654-ab-host.env") is None
