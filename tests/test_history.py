"""Unit tests of the env history model, exports and conda activation (no containers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kernel_provider.incontainer import activation, history

CH = "file:///data/channel/conda-forge"
HISTORY = f"""==> 2024-05-01 10:00:00 <==
# cmd: mm-create -y zlib
# conda version: 3.8.0
+{CH}/linux-64::zlib-1.3.1-h0_0
# update specs: ["zlib"]
==> 2024-05-01 10:05:00 <==
# cmd: mm-install -y demo-tool
# conda version: 3.8.0
+{CH}/linux-64::demo-tool-1.0-h1_0
+{CH}/linux-64::libdemo-2.0-h2_0
# update specs: ["demo-tool"]
==> 2024-05-01 10:10:00 <==
# cmd: mm-install -y libdemo=1.0
# conda version: 3.8.0
-{CH}/linux-64::libdemo-2.0-h2_0
+{CH}/linux-64::libdemo-1.0-h3_0
# update specs: ["libdemo=1.0"]
==> 2024-05-01 10:15:00 <==
# cmd: mm-remove -y demo-tool
# conda version: 3.8.0
-{CH}/linux-64::demo-tool-1.0-h1_0
# remove specs: ["demo-tool"]
"""


def record(name, version, build, subdir="linux-64", depends=()):
    return {
        "name": name,
        "version": version,
        "build": build,
        "subdir": subdir,
        "depends": list(depends),
        "url": f"{CH}/{subdir}/{name}-{version}-{build}.conda",
        "md5": f"{name}md5",
        "sha256": f"{name}sha",
        "channel": CH + "/",
        "files": ["x"],
        "paths_data": {"paths": []},
    }


def test_revisions_with_diffs_specs_and_the_package_set():
    revisions = history.build_revisions(HISTORY)
    assert [r.number for r in revisions] == [0, 1, 2, 3]
    assert [r.command for r in revisions] == [
        "create zlib",
        "install demo-tool",
        "install libdemo=1.0",
        "remove demo-tool",
    ]
    assert [a["name"] for a in revisions[1].added] == ["demo-tool", "libdemo"]
    (change,) = revisions[2].changed
    assert (change["name"], change["from"]["version"], change["to"]["version"]) == ("libdemo", "2.0", "1.0")
    assert not revisions[2].added and not revisions[2].removed
    assert [r["name"] for r in revisions[3].removed] == ["demo-tool"]
    assert sorted(revisions[3].packages) == ["libdemo", "zlib"]
    assert revisions[3].requested == {"zlib": "zlib", "libdemo": "libdemo=1.0"}
    assert revisions[1].packages["demo-tool"].channel_name == "conda-forge"
    assert revisions[0].time == "2024-05-01 10:00:00"


def test_sidecar_user_and_command_and_a_stale_sidecar_is_ignored():
    sidecar = "\n".join(
        [
            json.dumps(
                {
                    "revision": 1,
                    "header": "==> 2024-05-01 10:05:00 <==",
                    "info": {"user": "alice", "command": "install demo-tool", "via": "%condatainer"},
                }
            ),
            json.dumps({"revision": 2, "header": "==> 1999-01-01 00:00:00 <==", "info": {"user": "mallory"}}),
            "not json",
        ]
    )
    revisions = history.build_revisions(HISTORY, sidecar, owner="owner")
    assert (revisions[1].user, revisions[1].via) == ("alice", "%condatainer")
    assert revisions[2].user == "owner"  # header mismatch: the sidecar line is not for this entry
    assert revisions[0].user == "owner"


def test_conda_and_micromamba_style_dists_and_commands():
    text = """==> 2023-01-01 00:00:00 <==
# cmd: /opt/conda/bin/conda create -n x python
+conda-forge/linux-64::python-3.11.0-h_0
+defaults::openssl-3.0-0
# update specs: ['python']
"""
    (rev,) = history.build_revisions(text)
    assert rev.command == "create python"
    assert rev.packages["python"].channel == "conda-forge" and rev.packages["python"].subdir == "linux-64"
    assert rev.packages["openssl"].channel == "defaults" and rev.packages["openssl"].version == "3.0"


def test_select_refuses_unknown_revisions():
    revisions = history.build_revisions(HISTORY)
    assert history.select(revisions, None).number == 3
    assert history.select(revisions, "1").number == 1
    for bad in (4, -1, "x", True):
        with pytest.raises(history.HistoryError):
            history.select(revisions, bad)
    with pytest.raises(history.HistoryError, match="no history"):
        history.select([], None)


def test_environment_yml_and_explicit_lock(tmp_path):
    prefix = tmp_path / "env"
    meta = prefix / "conda-meta"
    (meta / history.SIDECAR_DIR / history.RECORDS_DIR).mkdir(parents=True)
    (meta / "history").write_text(HISTORY)
    (prefix / ".condarc").write_text("channels:\n  - conda-forge\n  - bioconda\n")
    current = [record("zlib", "1.3.1", "h0_0"), record("libdemo", "1.0", "h3_0")]
    kept = [record("demo-tool", "1.0", "h1_0", depends=["libdemo >=1.0"]), record("libdemo", "2.0", "h2_0")]
    for rec in current:
        (meta / f"{rec['name']}-{rec['version']}-{rec['build']}.json").write_text(json.dumps(rec))
    for rec in kept:
        (
            meta / history.SIDECAR_DIR / history.RECORDS_DIR / f"{rec['name']}-{rec['version']}-{rec['build']}.json"
        ).write_text(json.dumps(rec))
    env = history.load_env_meta(prefix)
    revisions = env.revisions()
    assert env.channels == ["conda-forge", "bioconda"]
    assert env.installed == {"zlib-1.3.1-h0_0", "libdemo-1.0-h3_0"}
    assert "files" not in env.records["zlib-1.3.1-h0_0"]

    yml = history.render_environment_yml("demo/1.0", revisions[1], env.channels, alias="file:///data/channel")
    assert "name: demo-1.0\nchannels:\n  - conda-forge\n  - bioconda\ndependencies:\n  - zlib\n  - demo-tool\n" in yml

    lock = history.render_explicit("demo", revisions[1], env)
    lines = lock.split("@EXPLICIT\n", 1)[1].splitlines()
    # Dependencies first (libdemo before demo-tool), each URL with its md5.
    assert lines == [
        f"{CH}/linux-64/libdemo-2.0-h2_0.conda#libdemomd5",
        f"{CH}/linux-64/demo-tool-1.0-h1_0.conda#demo-toolmd5",
        f"{CH}/linux-64/zlib-1.3.1-h0_0.conda#zlibmd5",
    ]
    assert "# platform: linux-64" in lock

    # A package nobody recorded cannot be locked (unless asked to be lenient).
    (meta / history.SIDECAR_DIR / history.RECORDS_DIR / "libdemo-2.0-h2_0.json").unlink()
    env = history.load_env_meta(prefix)
    with pytest.raises(history.HistoryError, match="libdemo-2.0-h2_0"):
        history.render_explicit("demo", revisions[1], env)
    assert f"{CH}/linux-64/libdemo-2.0-h2_0.conda\n" in history.render_explicit("demo", revisions[1], env, strict=False)


def test_record_script_counts_new_revisions_only(tmp_path):
    """The sidecar gets a line only when the wrapped command added a history entry."""
    prefix = tmp_path / "env"
    (prefix / "conda-meta").mkdir(parents=True)
    (prefix / "conda-meta" / "zlib-1-0.json").write_text("{}")
    fake = tmp_path / "mm-fake"
    fake.write_text(
        "#!/bin/sh\n"
        '[ "$1" = change ] && printf "==> 2024-01-01 00:00:0%s <==\\n" "$2" >>"$CNT_CONDA_PREFIX/conda-meta/history"\n'
        "exit ${3:-0}\n"
    )
    fake.chmod(0o755)
    env = {**os.environ, "CNT_CONDA_PREFIX": str(prefix)}

    def run(*args):
        cmd = history.recorded([str(fake), *args], "test " + " ".join(args), "bob", "unit")
        return subprocess.run(cmd, env=env, capture_output=True, text=True).returncode

    assert run("change", "1") == 0
    assert run("nothing") == 0
    assert run("change", "2", "3") == 3  # failures keep their exit status and record nothing
    assert run("change", "4") == 0
    lines = (prefix / "conda-meta" / "jupyter-condatainer" / "history.jsonl").read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    assert [(e["revision"], e["header"], e["info"]["user"]) for e in entries] == [
        (0, "==> 2024-01-01 00:00:01 <==", "bob"),
        (2, "==> 2024-01-01 00:00:04 <==", "bob"),
    ]
    assert (prefix / "conda-meta" / "jupyter-condatainer" / "records" / "zlib-1-0.json").is_file()


def test_activation_runs_scripts_and_state_vars_in_path_order(tmp_path):
    envs = {}
    for name in ("low", "high"):
        prefix = tmp_path / name
        (prefix / "bin").mkdir(parents=True)
        (prefix / "conda-meta").mkdir()
        (prefix / "etc" / "conda" / "activate.d").mkdir(parents=True)
        (prefix / "conda-meta" / "state").write_text(json.dumps({"env_vars": {f"{name.upper()}_VAR": "it's set"}}))
        (prefix / "etc" / "conda" / "activate.d" / "a.sh").write_text(
            f'echo noise\nexport SEEN="${{SEEN:-}}{name}:$CONDA_PREFIX "\nunset REMOVE_ME\n'
        )
        envs[name] = prefix
    (tmp_path / "plain" / "bin").mkdir(parents=True)  # a venv-like overlay: no conda-meta
    path = f"{envs['high']}/bin:{tmp_path / 'plain' / 'bin'}:{envs['low']}/bin:/usr/bin:/bin"
    assert activation.conda_prefixes(path) == [str(envs["low"]), str(envs["high"])]
    result = activation.activated_environment({"PATH": path, "REMOVE_ME": "x", "KEEP": "y"}, sys.executable)
    assert result["SEEN"] == f"low:{envs['low']} high:{envs['high']} "
    assert result["LOW_VAR"] == result["HIGH_VAR"] == "it's set"
    assert result["CONDA_PREFIX"] == str(envs["high"]) and result["CONDA_SHLVL"] == "2"
    assert "REMOVE_ME" not in result and result["KEEP"] == "y"
    assert "SHLVL" not in result and "_" not in result
    assert activation.activated_environment({"PATH": "/usr/bin"}) is None


def test_a_broken_activation_script_still_sets_the_env_vars(tmp_path):
    prefix = tmp_path / "env"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "conda-meta").mkdir()
    (prefix / "conda-meta" / "state").write_text(json.dumps({"env_vars": {"FROM_STATE": "1"}}))
    (prefix / "etc" / "conda" / "activate.d").mkdir(parents=True)
    (prefix / "etc" / "conda" / "activate.d" / "bad.sh").write_text("exit 3\n")
    result = activation.activated_environment({"PATH": f"{prefix}/bin:/usr/bin:/bin"}, sys.executable)
    assert result["FROM_STATE"] == "1" and result["CONDA_PREFIX"] == str(prefix)


def test_dist_parse_round_trip():
    dist = history.Dist.parse(f"{CH}/noarch::demo-pkg-name-0.1-pyh_0")
    assert (dist.channel, dist.subdir, dist.name, dist.version, dist.build) == (
        CH,
        "noarch",
        "demo-pkg-name",
        "0.1",
        "pyh_0",
    )
    assert Path(dist.channel).name == dist.channel_name == "conda-forge"
