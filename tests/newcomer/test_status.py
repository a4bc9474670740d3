"""Issue 6: ``agavefs status [MOUNTPOINT] [--json]``: for each live mount, system and
path, uptime, pending uploads, cache entries and hit ratio, requests by kind and their
errors, bytes up and down, token expiry; a table for people, JSON for scripts; a dead
daemon's registration is cleaned up."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from newcomer_support import HAVE_FUSE, agavefs, no_traceback

pytestmark = pytest.mark.skipif(not HAVE_FUSE, reason="needs /dev/fuse and fusermount3 (apt install fuse3)")


def test_status_json_and_table(emulator_factory, mount_factory, private_runtime_dir):
    # uploads stay pending for a few seconds: the status shows them
    emu = emulator_factory("--staging-delay", "4", "--token-ttl", "7200")
    (emu.home() / "results").mkdir()
    (emu.home() / "results" / "table.csv").write_bytes(b"a,b\n" * 50_000)  # 200 KB to read
    started = time.time()
    m = mount_factory(emu)
    assert len((m.path / "results" / "table.csv").read_bytes()) == 200_000
    os.listdir(m.path / "results")
    os.listdir(m.path / "results")  # a cache hit
    (m.path / "new.bin").write_bytes(b"n" * 123_456)
    try:
        os.stat(m.path / "missing.txt")
    except FileNotFoundError:
        pass
    time.sleep(1.1)

    r = m.agavefs("status", str(m.path), "--json", timeout=30)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert list(doc) == ["mounts"] and len(doc["mounts"]) == 1
    s = doc["mounts"][0]
    assert s["mountpoint"] == str(m.path)
    assert (s["system"], s["path"]) == ("local.storage", "/home/demo")
    assert s["base_url"] == emu.url and s["username"] == "demo"
    assert s["uptime"] >= 1.0 and abs(s["started"] - time.time()) < 120
    pending = {p["path"]: p for p in s["pending"]}
    assert pending["/new.bin"]["size"] == 123_456
    assert pending["/new.bin"]["state"] in ("queued", "uploading", "staging")
    assert {"attempts", "last_error"} <= set(pending["/new.bin"])
    cache = s["cache"]
    assert cache["entries"] >= 2 and cache["hits"] >= 1
    assert 0 < cache["hit_ratio"] <= 1 and cache["hit_ratio"] == pytest.approx(
        cache["hits"] / (cache["hits"] + cache["misses"]), abs=1e-3)
    b = s["backend"]
    assert b["requests"]["list"] >= 1 and b["requests"]["read"] >= 1 and b["requests"]["upload"] >= 1
    assert b["errors"].get("stat", 0) >= 1  # the missing file
    assert b["bytes_down"] >= 200_000 and b["bytes_up"] >= 123_456
    assert started + 7200 - 120 < b["token_expires_at"] < time.time() + 7200 + 5
    assert s["pid"] > 0 and s["spool_bytes"] >= 123_456

    # the same for people
    r = m.agavefs("status", str(m.path), timeout=30)
    assert r.returncode == 0, r.stderr
    table = r.stdout
    for text in (str(m.path), "agavefs#local.storage:/home/demo", "uptime", "token expires", "hit ratio",
                 "1 upload", "/new.bin", "120.6 KiB", "list ", "read ", "upload ", "failed", "down", "up"):
        assert text in table, f"{text!r} not in:\n{table}"
    no_traceback(r)


def test_status_lists_live_mounts_and_forgets_dead_ones(emulator_factory, mount_factory, private_runtime_dir):
    emu = emulator_factory()
    alive = mount_factory(emu, name="alive")
    doomed = mount_factory(emu, name="doomed")
    r = alive.agavefs("status", "--json", timeout=30)
    listed = {s["mountpoint"] for s in json.loads(r.stdout)["mounts"]}
    assert {str(alive.path), str(doomed.path)} <= listed
    registrations = sorted(p.name for p in (private_runtime_dir / "agavefs").glob("*.json"))
    assert len(registrations) == 2

    # the daemon dies without cleaning up (SIGKILL): its registration stays behind...
    doomed.proc.send_signal(signal.SIGKILL)
    doomed.proc.wait(30)
    assert len(list((private_runtime_dir / "agavefs").glob("*.json"))) == 2
    # ...until status notices that nobody answers there
    r = alive.agavefs("status", timeout=30)
    assert r.returncode == 0, r.stderr
    assert str(alive.path) in r.stdout and str(doomed.path) not in r.stdout
    left = list((private_runtime_dir / "agavefs").glob("*"))
    assert len([p for p in left if p.suffix == ".json"]) == 1
    assert len([p for p in left if p.suffix == ".sock"]) == 1
    doomed.kill()  # clears the stale mount

    r = alive.agavefs("status", str(doomed.path), timeout=30)
    assert r.returncode == 1 and "is not a live agavefs mount" in r.stderr
    no_traceback(r)


def test_status_with_no_mounts(private_runtime_dir, monkeypatch, tmp_path):
    r = agavefs("status", timeout=30)
    assert r.returncode == 0 and "Traceback" not in r.stderr
    r = agavefs("status", "--json", timeout=30)
    mounts = json.loads(r.stdout)["mounts"]
    # other users of this machine's /tmp/agavefs-UID may have mounts; none of ours
    assert all(not m["mountpoint"].startswith(str(tmp_path)) for m in mounts)
