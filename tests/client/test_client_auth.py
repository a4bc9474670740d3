"""`agavefs login`, the credentials cache and token upkeep, against the emulator."""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import subprocess
import sys
import textwrap
import time

import pytest
from helpers import REPO, password_token

from agavefs.client import AgaveClient, Credentials
from agavefs.client.credentials import FIELDS
from client_support import client_for, run_login, write_cli_cache


def _cache(tmp_path, name="cache"):
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    return d


def test_login_end_to_end(emulator, tmp_path):
    cache = _cache(tmp_path)
    r = run_login(emulator.url, cache)
    assert r.returncode == 0, r.stderr
    path = cache / "current"
    assert str(path) in r.stdout and "demo" not in r.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = json.loads(path.read_text())
    assert list(data) == list(FIELDS)  # agave-cli's names, nothing else
    assert all(isinstance(v, str) for v in data.values())  # agave-cli writes strings
    assert data["baseurl"] == emulator.url and data["username"] == "demo"
    assert data["created_at"].isdigit() and data["expires_in"] == "14400"
    assert data["access_token"] and data["refresh_token"] and data["apikey"] and data["apisecret"]
    assert sorted(p.name for p in cache.iterdir()) == ["current"]  # no temp file left behind
    creds = Credentials.load(str(cache))
    assert abs(creds.expiry().timestamp() - (int(data["created_at"]) + 14400)) < 1
    with AgaveClient(creds) as c:
        assert c.profile()["username"] == "demo"
        assert c.list("/home/demo")[0].is_dir

    # a second login reuses the stored OAuth client
    r2 = run_login(emulator.url, cache)
    assert r2.returncode == 0, r2.stderr
    data2 = json.loads(path.read_text())
    assert data2["apikey"] == data["apikey"] and data2["access_token"] != data["access_token"]
    creates = [e for e in emulator.access_entries()
               if e.get("method") == "POST" and "/clients/v2" in str(e.get("path"))]
    assert len(creates) == 1

    # a wrong password: one clear line, non-zero, cache untouched
    bad = run_login(emulator.url, cache, "not-the-password")
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1 and "wrong user name or password" in bad.stderr
    assert "Traceback" not in bad.stderr and "not-the-password" not in bad.stderr + bad.stdout
    assert json.loads(path.read_text()) == data2


def test_login_replaces_a_client_of_the_same_name(emulator, tmp_path):
    old = password_token(emulator.url, "demo", "demo", client_name="taken")
    cache = _cache(tmp_path)
    r = run_login(emulator.url, cache, "demo", "--client-name", "taken", "--tenant-id", "t1")
    assert r.returncode == 0, r.stderr
    data = json.loads((cache / "current").read_text())
    assert data["apikey"] != old["apikey"] and data["tenantid"] == "t1"
    with client_for(emulator, cache) as c:
        c.stat("/home/demo")


def test_login_errors_are_one_line(tmp_path):
    r = run_login("http://127.0.0.1:9", _cache(tmp_path), "x", timeout=60)
    assert r.returncode == 3 and r.stderr.count("\n") == 1 and "cannot reach" in r.stderr
    assert "Traceback" not in r.stderr
    r = run_login("ftp://example.org", _cache(tmp_path), "x")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_agave_cli_and_agavepy_caches_work_unchanged(emulator, tmp_path):
    cache = _cache(tmp_path)
    creds = write_cli_cache(emulator, cache)
    text = (cache / "current").read_text()
    with AgaveClient(Credentials.load(str(cache))) as c:
        assert c.list("/home/demo")[0].name == "demo"
    assert (cache / "current").read_text() == text  # nothing rewritten without a refresh
    # agavepy's Token writes ints and time.ctime()
    data = json.loads(text)
    now = int(time.time())
    data.update(created_at=now, expires_in=14400, expires_at=time.ctime(now + 14400))
    (cache / "current").write_text(json.dumps(data))
    loaded = Credentials.load(str(cache))
    with AgaveClient(loaded) as c:
        assert abs(c.token_expires_at().timestamp() - (now + 14400)) < 1
        c.stat("/home/demo")
    assert creds.apikey == loaded.apikey


def test_token_expiry_mid_sequence(emulator_factory, tmp_path):
    emu = emulator_factory("--token-ttl", "2")
    cache = _cache(tmp_path)
    assert run_login(emu.url, cache).returncode == 0
    first = json.loads((cache / "current").read_text())
    with AgaveClient(Credentials.load(str(cache)), op_timeout=20) as c:
        c.mkdir("/home/demo/t")
        before = c.stats.refreshes
        time.sleep(2.1)  # past the token's life, between two operations
        assert c.list("/home/demo")[0].is_dir
        c.stat("/home/demo/t")
        assert c.stats.refreshes == before + 1
        saved = json.loads((cache / "current").read_text())
        assert saved["refresh_token"] != first["refresh_token"]  # rotated and persisted
        assert saved["access_token"] == c.credentials.access_token
        assert stat.S_IMODE((cache / "current").stat().st_mode) == 0o600
        # the reactive path: the client believes its token is good, the server says 401
        c.credentials.created_at = str(int(time.time()))
        c.credentials.expires_in = "100000"
        before = c.stats.refreshes
        time.sleep(2.1)
        assert c.list("/home/demo")[0].is_dir
        assert c.stats.refreshes == before + 1
    statuses = [e.get("status") for e in emu.access_entries()]
    assert 401 in statuses


CHILD = textwrap.dedent("""
    import json, sys, time
    from agavefs.client import AgaveClient, Credentials
    c = AgaveClient(Credentials.load(), op_timeout=30)
    ok = errors = 0
    end = time.monotonic() + float(sys.argv[1])
    while time.monotonic() < end:
        try:
            c.list("/home/demo"); c.stat("/home/demo"); ok += 1
        except Exception as exc:
            errors += 1; print(repr(exc), file=sys.stderr)
        time.sleep(0.05)
    print(json.dumps({"ok": ok, "errors": errors, "refreshes": c.stats.refreshes}))
""")


def test_two_processes_refresh_concurrently(emulator_factory, tmp_path):
    emu = emulator_factory("--token-ttl", "2")
    cache = _cache(tmp_path)
    assert run_login(emu.url, cache).returncode == 0
    env = dict(os.environ, AGAVE_CACHE_DIR=str(cache))
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, "4.5"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=str(REPO))
             for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    for r in results:
        assert r["errors"] == 0 and r["ok"] > 5, results
    assert sum(r["refreshes"] for r in results) >= 2
    json.loads((cache / "current").read_text())  # still valid JSON
    assert stat.S_IMODE((cache / "current").stat().st_mode) == 0o600
    with AgaveClient(Credentials.load(str(cache))) as c:  # and its tokens still work
        c.stat("/home/demo")


def test_debug_log_never_contains_secrets(emulator_factory, tmp_path, monkeypatch, capsys):
    password, wrong = "Pw-s3cret-XYZ", "Wr0ng-Pa55-QQ"
    emu = emulator_factory("--token-ttl", "2", users=(("demo", password),))
    cache = _cache(tmp_path)
    monkeypatch.setenv("AGAVE_CACHE_DIR", str(cache))
    records: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))
            if record.exc_info:
                records.append(logging.Formatter().formatException(record.exc_info))

    handler = Grab(level=logging.DEBUG)
    logger = logging.getLogger("agavefs")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    secrets = set()
    try:
        from agavefs.cli import main

        monkeypatch.setattr(sys, "stdin", io.StringIO(wrong + "\n"))
        assert main(["login", "--base-url", emu.url, "--username", "demo", "--password-stdin"]) != 0
        monkeypatch.setattr(sys, "stdin", io.StringIO(password + "\n"))
        assert main(["login", "--base-url", emu.url, "--username", "demo", "--password-stdin"]) == 0
        first = json.loads((cache / "current").read_text())
        secrets |= {first["access_token"], first["refresh_token"], first["apisecret"]}
        local = tmp_path / "f.txt"
        local.write_bytes(b"hello secrets")
        with AgaveClient(Credentials.load(), op_timeout=20) as c:
            c.mkdir("/home/demo/s")
            c.upload(str(local), "/home/demo/s", "f.txt")
            time.sleep(2.2)  # past the token's life: a refresh happens
            c.wait_staged("/home/demo/s/f.txt", 13, time.monotonic() + 20, stall_timeout=15)
            assert c.read("/home/demo/s/f.txt", 0, 100) == b"hello secrets"
            with pytest.raises(Exception):
                c.stat("/home/demo/missing")
            assert c.stats.refreshes >= 1
            secrets |= {c.credentials.access_token, c.credentials.refresh_token}
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    out = capsys.readouterr()
    text = "\n".join(records) + out.out + out.err
    assert "GET" in text and "refresh" in text  # the log did record the activity
    secrets |= {password, wrong}
    for s in secrets:
        assert s and s not in text, "a secret appeared in the debug log"


def test_threads_share_one_client_through_refreshes(emulator_factory, tmp_path):
    import threading

    emu = emulator_factory("--token-ttl", "2")
    cache = _cache(tmp_path)
    assert run_login(emu.url, cache).returncode == 0
    (emu.home() / "t.bin").write_bytes(b"0123456789" * 1000)
    errors: list[BaseException] = []
    with AgaveClient(Credentials.load(str(cache)), workers=8, op_timeout=20) as c:
        end = time.monotonic() + 2.5

        def work():
            try:
                while time.monotonic() < end:
                    c.list("/home/demo")
                    assert c.read("/home/demo/t.bin", 5000, 20) == b"0123456789" * 2
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors
        # refreshes are serialised: about one per token lifetime, not one per thread
        assert 1 <= c.stats.refreshes <= 4
