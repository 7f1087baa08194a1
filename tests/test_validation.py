"""Unit tests of the input checks (kernel_provider.model.validation) and of the places that apply them."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Facts, placeholder_images

from kernel_provider.envs import freeze
from kernel_provider.envs.operations import EnvOperations
from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.model import command, envfile, names
from kernel_provider.model.overlays import scan
from kernel_provider.model.validation import (
    MAX_ENV_VALUE_BYTES,
    NameTakenError,
    check_new_name,
    env_key_problem,
    env_value_problem,
    validate_channels,
    validate_env_name,
    validate_lookup_name,
    validate_size,
    validate_specs,
)


@pytest.fixture
def catalog(tmp_path: Path):
    images = placeholder_images(
        tmp_path / "images",
        [
            "ubuntu24--base_image.sif",
            "python--3.10.sqf",
            "python--3.11.sqf",
            "hello--1.0.sqf",
            "frozen--1.0.sqf",
            "genome--hg38--star.sqf",
            "abc.img",
            "a--1.img",
            "myenv--1.0.img",
            "ubuntu24--gcc--12.sqf",
        ],
    )
    return scan([str(images)], distro="ubuntu24")


def check(name, kind="img", catalog=None, kernelspecs=(), label=None):
    check_new_name(name, kind, catalog, kernelspecs, label or f"{name} (env)")


# --- new image names: syntax ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["myenv", "my-env_2", "myenv/1.0", "r+tools/4.3", "A1"])
def test_valid_env_names_are_kept_as_given(name):
    assert validate_env_name(name) == name


@pytest.mark.parametrize("name", ["bar.sqf", "bar.img", "base.sif", "python/3.11.img", "x/1.SQF"])
def test_env_names_ending_like_an_image_file_are_refused(name):
    with pytest.raises(ValueError, match="leave out the .* ending"):
        validate_env_name(name)


@pytest.mark.parametrize("name", [None, 123, 1.5, True, ["x"], {"n": "x"}])
def test_env_names_must_be_strings_never_coerced(name):
    with pytest.raises(ValueError, match="must be a string"):
        validate_env_name(name)


@pytest.mark.parametrize("name", ["", " inj", "inj ", "a b", "../x", "a/../b", "a--b", "a/b/c", "-x", "a;b", "x" * 65])
def test_malformed_env_names_are_refused(name):
    with pytest.raises(ValueError, match="invalid name"):
        validate_env_name(name)


def test_lookup_names_with_spaces_around_are_refused_not_trimmed():
    assert validate_lookup_name("python/3.11") == "python/3.11"
    for name in ("inj ", " inj", "inj\n", "\tinj"):
        with pytest.raises(names.InvalidNameError, match="remove the spaces"):
            validate_lookup_name(name)


# --- new image names: collisions and shadowing ------------------------------------------------


@pytest.mark.parametrize("name", ["fresh", "fresh/1.0", "hello-env", "python-env", "myenv/2.0", "genomics"])
def test_free_env_names_pass(catalog, name):
    check(name, catalog=catalog)


def test_an_existing_name_is_taken(catalog):
    with pytest.raises(FileExistsError, match="an image named abc already exists"):
        check("abc", catalog=catalog)
    with pytest.raises(FileExistsError, match="already exists"):
        check("gcc/12", catalog=catalog)  # the default distro's alias of ubuntu24/gcc/12


@pytest.mark.parametrize(
    ("name", "clashes_with"),
    [
        ("python", "python/3.1"),  # would take over what bare 'python' resolves to
        ("hello", "hello/1.0"),
        ("hello/2.0", "hello/1.0"),  # an .img would become the newest 'hello' (a .sqf family)
        ("python/3.12", "python/3.1"),  # ... or the newest Python
        ("myenv", "myenv/1.0"),
        ("genome", "genome/hg38/star"),
        ("gcc", "gcc/12"),
        ("ubuntu24/x", "ubuntu24/"),
        ("abc/1.0", "abc"),  # bare 'abc' is an exact image: the new one would be hidden by it
    ],
)
def test_names_that_would_shadow_or_be_shadowed_are_refused(catalog, name, clashes_with):
    with pytest.raises(NameTakenError, match=f"cannot use the name {name}: the image {clashes_with}"):
        check(name, catalog=catalog)


def test_another_version_of_the_same_kind_is_allowed_but_not_of_another_kind(catalog):
    check("frozen/2.0", "sqf", catalog, label="frozen/2.0 (frozen)")
    check("myenv/2.0", "img", catalog)
    with pytest.raises(NameTakenError, match=r"frozen/1.0 \(.sqf\)"):
        check("frozen/2.0", "img", catalog)
    with pytest.raises(NameTakenError, match=r"myenv/1.0 \(.img\)"):
        check("myenv/2.0", "sqf", catalog, label="myenv/2.0 (frozen)")


@pytest.mark.parametrize(("name", "existing"), [("ABC", "abc"), ("Python", "python/3.1"), ("Hello/2.0", "hello/1.0")])
def test_names_differing_only_in_case_are_refused(catalog, name, existing):
    with pytest.raises(NameTakenError, match=f"differs only in case from the image {existing}"):
        check(name, catalog=catalog)


@pytest.mark.parametrize(("name", "existing"), [("a-1", "a/1"), ("a+1", "a/1"), ("python-3.11", "python/3.11")])
def test_names_that_map_to_the_same_kernel_name_are_refused(catalog, name, existing):
    with pytest.raises(NameTakenError, match=f"same kernel name as the image {existing}"):
        check(name, catalog=catalog)


def test_an_existing_kernelspec_of_the_same_name_is_refused_case_insensitively(catalog):
    check("fresh", catalog=catalog, kernelspecs={"condatainer-other-env", "python3"})
    with pytest.raises(NameTakenError, match="jupyter kernelspec remove condatainer-fresh-env"):
        check("fresh", catalog=catalog, kernelspecs={"Condatainer-Fresh-Env"})
    with pytest.raises(NameTakenError, match="condatainer-fresh-1.0-frozen"):
        check("fresh/1.0", "sqf", catalog, {"condatainer-fresh-1.0-frozen"}, "fresh/1.0 (frozen)")


# --- freeze targets get the same checks -------------------------------------------------------


@pytest.fixture
def operations(catalog, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "data"))
    return EnvOperations(CondaTainerConfig(image_dirs=list(catalog.dirs), distro="ubuntu24"))


def test_freeze_target_accepts_a_new_version_of_a_frozen_family(operations, catalog):
    target = freeze.check_target(operations, "abc", "frozen", "2.0")
    assert target.name == "frozen/2.0" and target.path.name == "frozen--2.0.sqf"


@pytest.mark.parametrize(
    ("name", "version", "error", "message"),
    [
        (None, "1.0", ValueError, "needs a name and a version"),
        ("x", 1, ValueError, "needs a name and a version"),
        (" x", "1.0", ValueError, "invalid name"),
        ("x", "1.sqf", ValueError, "leave out the .sqf ending"),
        ("frozen", "1.0", FileExistsError, "already exists"),
        ("abc", "1.0", NameTakenError, "the image abc"),
        ("python", "9.9.img", ValueError, "leave out the .img ending"),
        ("myenv", "2.0", NameTakenError, "myenv/1.0"),
        ("ABC", "1.0", NameTakenError, "differs only in case"),
    ],
)
def test_freeze_target_refusals(operations, name, version, error, message):
    with pytest.raises(error, match=message):
        freeze.check_target(operations, "abc", name, version)


def test_freeze_target_refuses_taking_over_a_kernelspec(operations, tmp_path):
    spec = tmp_path / "data" / "kernels" / "condatainer-fresh-1.0-frozen"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text('{"argv": ["python"], "display_name": "x", "language": "python"}')
    with pytest.raises(NameTakenError, match="a kernelspec of that name exists"):
        freeze.check_target(operations, "abc", "fresh", "1.0")


# --- package specs, channels, sizes -------------------------------------------------------------


@pytest.mark.parametrize(
    "spec", ["numpy", "numpy>=1.26", "numpy >=1.26", "conda-forge::numpy=1.26", "libdemo=1.0", "a-b_c"]
)
def test_valid_specs(spec):
    assert validate_specs([spec]) == [spec]


@pytest.mark.parametrize(
    "spec", ["zlib --force", "-c", "--override-channels", "-y", "zlib -c x", "-c::zlib", "--force"]
)
def test_option_like_specs_are_refused(spec):
    with pytest.raises(ValueError, match="options such as -c or --force are not accepted"):
        validate_specs([spec])


@pytest.mark.parametrize("spec", ["numpy; rm -rf /", "$(id)", "a`id`", "x" * 201, "", "::x"])
def test_malformed_specs_are_refused(spec):
    with pytest.raises(ValueError, match="invalid package spec"):
        validate_specs([spec])


@pytest.mark.parametrize("specs", [[], "zlib", [None], [1]])
def test_specs_must_be_a_non_empty_list_of_strings(specs):
    with pytest.raises(ValueError):
        validate_specs(specs)


@pytest.mark.parametrize(
    "channel", ["conda-forge", "bioconda", "conda-forge/label/dev", "file:///data/channel", "https://example.org/ch"]
)
def test_valid_channels(channel):
    assert validate_channels([channel, " "]) == [channel]


@pytest.mark.parametrize("channel", ["-c", "--override-channels", "-x/y", "../../etc", "a/../b", "ftp://x", "a b"])
def test_invalid_channels_are_refused(channel):
    with pytest.raises(ValueError, match="invalid channel"):
        validate_channels([channel])


def test_plain_http_channels_are_refused():
    with pytest.raises(ValueError, match="plain http://.*use https://"):
        validate_channels(["http://example.org/ch"])


@pytest.mark.parametrize("channels", ["conda-forge", [None], [3]])
def test_channels_must_be_a_list_of_strings(channels):
    with pytest.raises(ValueError):
        validate_channels(channels)


@pytest.mark.parametrize("size", [64, 1024, 1024 * 1024])
def test_valid_sizes(size):
    assert validate_size(size) == size


@pytest.mark.parametrize("size", [63, 1024 * 1024 + 1, "1024", 1024.0, True, None])
def test_invalid_sizes(size):
    with pytest.raises(ValueError, match="size_mb must be an integer"):
        validate_size(size)


# --- variables for Apptainer's env script ---------------------------------------------------------


@pytest.mark.parametrize("key", ["A", "_x", "PATH2", "lower_case"])
def test_plain_variable_names_pass(key):
    assert env_key_problem(key) == ""


@pytest.mark.parametrize("key", ["A B", "1A", "A-B", "A'B", 'A"B', "$(id)", "A;B", "A=B", "é"])
def test_other_keys_are_refused(key):
    assert "is not a variable name" in env_key_problem(key)


def test_value_length_is_capped():
    assert env_value_problem("x" * MAX_ENV_VALUE_BYTES) == ""
    assert "over the 64 KiB limit" in env_value_problem("x" * (MAX_ENV_VALUE_BYTES + 1))
    assert env_value_problem("é" * (MAX_ENV_VALUE_BYTES // 2 + 1))  # counted in bytes, not characters


def test_bad_sidecar_lines_are_skipped_with_file_and_line_the_rest_applies():
    text = f"#WHATIS:tool\nGOOD=$app_root/x\nBAD'KEY=1\n$(touch /tmp/pwned)=1\nHUGE={'x' * (200 * 1024)}\nALSO_GOOD=2\n"
    env = envfile.parse_sidecar(text, "/cnt/tool/1", "/images/tool--1.sqf.env")
    assert env.variables == {"GOOD": "/cnt/tool/1/x", "ALSO_GOOD": "2"}
    assert env.whatis == "tool"
    assert [w.split(": ", 1)[0] for w in env.warnings] == [
        "/images/tool--1.sqf.env:3",
        "/images/tool--1.sqf.env:4",
        "/images/tool--1.sqf.env:5",
    ]
    assert "is not a variable name" in env.warnings[0] and "this line is skipped" in env.warnings[0]
    assert "over the 64 KiB limit" in env.warnings[2]


def test_bad_build_script_lines_are_skipped_and_warnings_survive_shadowing():
    script = "#!/bin/bash\n#ENV:OK=1\n#ENV:NOT OK=2\n#ENVNOTE:a note\n"
    embedded = envfile.parse_build_script(script, "/cnt/t/1", "t.sqf:cnt/t/1/.cnt-build-script")
    assert embedded.variables == {"OK": "1"} and embedded.notes == {}
    assert embedded.warnings[0].startswith("t.sqf:cnt/t/1/.cnt-build-script:3: 'NOT OK' is not a variable name")
    merged = embedded.shadowed_by(envfile.parse_sidecar("A-B=1\n", "/cnt/t/1", "t.sqf.env"))
    assert len(merged.warnings) == 2 and merged.warnings[1].startswith("t.sqf.env:1:")


def test_sidecar_warnings_become_plan_diagnostics(catalog):
    from kernel_provider.model.plan import StackRequest, plan_container

    hello = catalog.by_name["hello/1.0"]
    facts = Facts(envs={hello.name: envfile.parse_sidecar("X-Y=1\nZ=2\n", hello.app_root, f"{hello.path}.env")})
    plan = plan_container(StackRequest(overlays=["hello"]), catalog, facts, environ={}, cwd="/", uid=1000)
    assert plan.env_dict["Z"] == "2" and "X-Y" not in plan.env_dict
    assert any(d.level == "warning" and "hello--1.0.sqf.env:1" in d.message for d in plan.diagnostics)
    command.render_env_file(plan.env)  # everything that is left can be written


@pytest.mark.parametrize("key", ["A B", "X'; touch /tmp/pwned; '", "1X", ""])
def test_render_env_file_refuses_a_bad_key_from_any_source(key):
    with pytest.raises(ValueError, match="cannot pass the variable"):
        command.render_env_file([("GOOD", "1"), (key, "v")])
