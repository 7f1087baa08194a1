"""Preview before changing an env: the solver's plan through the REST API (``dry_run``) and the
magic (``--dry-run``, then ``%condatainer apply``), checked against what the change then does."""

from __future__ import annotations

import functools
import http.server
import json
import os
import threading

import pytest
from conftest import env_kernel, run_cell, wait_job

pytestmark = pytest.mark.integration


@pytest.fixture
def jp_server_config(kernel_env):
    return {"ServerApp": {"jpserver_extensions": {"kernel_provider": True}}}


async def packages(api, name: str) -> dict[str, str]:
    _, data = await api("GET", "overlays", name, "packages")
    return {p["name"]: f"{p['version']}-{p['build']}" for p in data["packages"]}


async def test_preview_plan_equals_what_the_change_does(channel_env, api, kernel_env, jp_serverapp):
    _, data = await api("POST", "overlays", body={"name": "pv", "size_mb": 128, "packages": ["zlib", "libdemo=1.0"]})
    assert (await wait_job(api, data["job"]["id"]))["state"] == "succeeded"
    image = kernel_env / "images" / "pv.img"
    before, stamp = await packages(api, "pv"), os.stat(image).st_mtime_ns

    change = {"specs": ["demo-tool", "libdemo=2.0"]}
    status, answer = await api("POST", "overlays", "pv", "packages", body={**change, "dry_run": True})
    assert status == 200, answer
    plan = answer["plan"]
    print("plan:", plan)
    assert [p["name"] for p in plan["added"]] == ["demo-tool"]
    assert [(p["name"], p["from"].split("-")[0], p["to"].split("-")[0]) for p in plan["upgraded"]] == [
        ("libdemo", "1.0", "2.0")
    ]
    assert plan["removed"] == [] and plan["downgraded"] == []
    assert plan["download_count"] >= 1 and plan["download_bytes"] > 0

    status, refused = await api("POST", "overlays", "pv", "packages", body={"specs": ["nosuchpkg"], "dry_run": True})
    assert status == 400 and "nosuchpkg" in refused["message"], refused
    status, removal = await api("DELETE", "overlays", "pv", "packages", body={"specs": ["libdemo"], "dry_run": True})
    assert status == 200 and [p["name"] for p in removal["plan"]["removed"]] == ["libdemo"], removal
    assert await packages(api, "pv") == before and os.stat(image).st_mtime_ns == stamp, "a preview changed the env"

    _, data = await api("POST", "overlays", "pv", "packages", body=change)
    assert (await wait_job(api, data["job"]["id"]))["state"] == "succeeded"
    after = await packages(api, "pv")
    assert sorted(after.keys() - before.keys()) == [p["name"] for p in plan["added"]]
    assert sorted(before.keys() - after.keys()) == [p["name"] for p in plan["removed"]]
    changed = {n: (before[n], after[n]) for n in before.keys() & after.keys() if before[n] != after[n]}
    assert changed == {p["name"]: (p["from"], p["to"]) for p in plan["upgraded"]}
    assert after["demo-tool"] == f"{plan['added'][0]['version']}-{plan['added'][0]['build']}"


# Every file of the env (path, size, mtime) and the dry runs' temporary package caches, as the kernel sees them.
ENV_LISTING = """
import glob, json, os
def entry(path):
    stat = os.lstat(path)
    return [os.path.relpath(path, "/ext3/env"), stat.st_size, stat.st_mtime_ns]
files = [entry(os.path.join(d, n)) for d, dirs, names in os.walk("/ext3/env") for n in dirs + names]
caches = glob.glob(os.path.join(os.environ.get("TMPDIR", "/tmp"), "condatainer-dry-run.*"))
print(json.dumps({"env": sorted([entry("/ext3/env"), *files]), "caches": sorted(caches)}))
"""


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - http.server's signature
        pass


@pytest.fixture
def http_channel_env(conda_channel, monkeypatch):
    """The test channels served over HTTP under the channel alias: the solver keeps an HTTP
    channel's repodata in its package cache (a ``file://`` channel's it reads in place)."""
    handler = functools.partial(QuietHandler, directory=str(conda_channel.root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("MAMBA_CHANNEL_ALIAS", f"http://127.0.0.1:{server.server_port}")
    yield
    server.shutdown()
    server.server_close()
    thread.join()


async def test_a_preview_changes_nothing_in_the_env(http_channel_env, api, kernel_env, jp_serverapp):
    """Not even the solver's repodata cache in the env's pkgs/: the server's preview in the kernel's
    instance (which has the env mounted writable) and the magic's --dry-run leave every file of the
    env as it was, and no temporary package cache behind."""
    async with env_kernel(api, jp_serverapp, "pc", ["zlib"]) as (_, client):
        listed, error = await run_cell(client, ENV_LISTING)
        assert error is None, error
        before = json.loads(listed)
        change = {"specs": ["demo-tool"], "dry_run": True}
        status, answer = await api("POST", "overlays", "pc", "packages", body=change)
        assert status == 200 and "demo-tool" in [p["name"] for p in answer["plan"]["added"]], answer
        shown, error = await run_cell(client, "%condatainer install demo-tool --dry-run")
        assert error is None and "+ demo-tool" in shown, (shown, error)
        listed, error = await run_cell(client, ENV_LISTING)
        assert error is None, error
        after = json.loads(listed)
    changed = set(map(tuple, after["env"])) ^ set(map(tuple, before["env"]))
    assert not changed, f"a preview changed the env (entries before or after only): {sorted(changed)}"
    assert after["caches"] == before["caches"], "a dry run left its temporary package cache"


async def test_magic_dry_run_then_apply_and_the_recorded_stack(channel_env, api, kernel_env, jp_serverapp):
    """The magic previews and applies; the kernel's stack record (what a notebook keeps in its
    metadata) then differs from the env, and says how."""
    async with env_kernel(api, jp_serverapp, "mv", ["zlib"]) as (kernel_id, client):
        status, recorded = await api("GET", "kernels", kernel_id, "stack")
        assert status == 200, recorded
        _, same = await api("POST", "stack", "compare", body={"stack": recorded})
        shown, error = await run_cell(client, "%condatainer install demo-tool --dry-run")
        assert error is None, error
        listed, _ = await run_cell(client, "%condatainer list demo")
        applied, error = await run_cell(client, "%condatainer apply")
        assert error is None, error
        after, _ = await run_cell(client, "%condatainer list demo")
        _, again = await run_cell(client, "%condatainer apply")
    print(shown)
    assert "+ demo-tool 1.0" in shown and "+ libdemo" in shown and "%condatainer apply" in shown
    assert "no packages matching" in listed, "the dry run changed the env"
    assert "demo-tool" in after and "libdemo" in after
    assert again["ename"] == "CondaTainerError" and "nothing to apply" in again["evalue"]

    print("stack record:", recorded)
    assert recorded["base_image"]["name"] == "ubuntu24/base_image"
    assert [o["name"] for o in recorded["overlays"]] == ["python/3.11", "mv"]
    assert recorded["overlays"][0]["identity"]["size"] > 0 and recorded["env"] == {"name": "mv", "revision": 0}
    assert same == {"differences": []}
    recorded["overlays"][0]["identity"]["head"] = "0" * 16  # as if python/3.11 had been rebuilt
    recorded["overlays"].append({"name": "gone/1.0", "kind": "sqf", "identity": {"size": 1, "mtime": 0, "head": ""}})
    _, answer = await api("POST", "stack", "compare", body={"stack": recorded})
    differences = answer["differences"]
    assert len(differences) == 3, differences
    assert "python/3.11 was rebuilt" in differences[0] and "gone/1.0 is missing" in differences[1]
    assert "mv moved on from revision 0 to 1" in differences[2] and "roll back to revision 0" in differences[2]
    status, _ = await api("POST", "stack", "compare", body={"stack": {"version": 99}})
    assert status == 400


def test_the_plan_reads_micromamba_json():
    from kernel_provider.incontainer.txplan import format_plan, parse_transaction

    def pkg(name, version, size=0):
        return {"name": name, "version": version, "build": "h0_0", "channel": "conda-forge", "size": size}

    fetch = [pkg("numpy", "2.0.1", 2048)]
    link = [pkg("numpy", "2.0.1"), pkg("python", "3.11.9"), pkg("openssl", "3.0.0")]
    unlink = [pkg("numpy", "1.26.4"), pkg("python", "3.11.10"), pkg("old", "1.0")]
    plan = parse_transaction(json.dumps({"actions": {"FETCH": fetch, "LINK": link, "UNLINK": unlink}}))
    assert [p["name"] for p in plan["added"]] == ["openssl"]
    assert [p["name"] for p in plan["removed"]] == ["old"]
    assert [p["name"] for p in plan["upgraded"]] == ["numpy"]
    assert [p["name"] for p in plan["downgraded"]] == ["python"]
    assert plan["download_bytes"] == 2048 and plan["download_count"] == 1
    assert format_plan(plan)[-1] == "Plan: 1 added, 1 upgraded, 1 downgraded, 1 removed; download 2.0 KiB (1 packages)."
    assert parse_transaction('{"success": true, "message": "All requested packages already installed"}')["added"] == []


def test_one_dry_run_command_for_the_server_and_the_magic():
    """The server's preview and the magic's ``--dry-run`` run the same builder's argv."""
    from kernel_provider.envs.preview import dry_run_command
    from kernel_provider.incontainer import txplan

    magic = txplan.dry_run_command("install", ["-c", "file:///ch", "numpy>=2"])
    wrapped = ["sh", "-c", txplan.DRY_RUN_SCRIPT, "sh"]
    assert magic == [*wrapped, "mm-install", "-y", "--dry-run", "--json", "-c", "file:///ch", "numpy>=2"]
    assert dry_run_command("install", ["numpy>=2"], ["file:///ch"]) == magic
    assert dry_run_command("remove", ["numpy"], ["file:///ch"]) == txplan.dry_run_command("remove", ["numpy"])
    with pytest.raises(ValueError, match="cannot preview 'create'"):
        txplan.dry_run_command("create", ["numpy"])
