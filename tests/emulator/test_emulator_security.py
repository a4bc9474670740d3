"""Traversal and malformed input: never an escape from ROOT, never a 500."""

from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from emu_client import Api


def raw(api: Api, method: str, target: str, body: bytes = b"", headers: dict | None = None):
    """Send an exact request target (no client-side normalisation); -> (status, headers, body)."""
    u = urllib.parse.urlsplit(api.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        hdrs = {"Authorization": api.s.headers["Authorization"], **(headers or {})}
        conn.putrequest(method, target, skip_accept_encoding=True)
        for k, v in hdrs.items():
            conn.putheader(k, v)
        if body or method in ("POST", "PUT"):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def tree(root):
    return sorted((str(p.relative_to(root)), p.read_bytes() if p.is_file() and not p.is_symlink() else None)
                  for p in root.rglob("*") if ".agave-emulator" not in p.parts)


def assert_clean(status, body, allowed):
    assert status in allowed, (status, body[:300])
    assert b"Traceback" not in body and b"File \"" not in body
    assert json.loads(body)["status"] == "error"


@pytest.fixture
def setup(emulator_factory, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"OUTSIDE SECRET")
    emu = emulator_factory(users=(("demo", "demo"), ("bob", "bobpw")))
    (emu.home() / "escape").symlink_to(outside)
    (emu.home() / "escape.txt").symlink_to(outside / "secret.txt")
    (emu.home() / "statelink").symlink_to(emu.root / ".agave-emulator")
    (emu.home() / "ok.txt").write_bytes(b"fine")
    (emu.home("bob") / "b.txt").write_bytes(b"bob")
    os.mkfifo(emu.home() / "fifo")
    return emu, Api(emu), outside


TRAVERSALS = [
    ("GET", "/files/v2/media/system/local.storage/demo/../../../etc/passwd"),
    ("GET", "/files/v2/media/system/local.storage/demo/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd"),
    ("GET", "/files/v2/media/system/local.storage/demo%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd"),
    ("GET", "/files/v2/media/system/local.storage//../../etc/passwd"),
    ("GET", "/files/v2/media/system/local.storage//etc/passwd"),
    ("GET", "/files/v2/media//etc/passwd"),
    ("GET", "/files/v2/media/../../../../etc/passwd"),
    ("GET", "/files/v2/listings/system/local.storage/demo/../../.."),
    ("GET", "/files/v2/listings/system/local.storage/demo/../bob"),
    ("GET", "/files/v2/media/system/local.storage/demo/../bob/b.txt"),
    ("GET", "/files/v2/listings/system/local.storage/demo/escape"),
    ("GET", "/files/v2/media/system/local.storage/demo/escape/secret.txt"),
    ("GET", "/files/v2/media/system/local.storage/demo/escape.txt"),
    ("GET", "/files/v2/listings/system/local.storage/demo/statelink"),
    ("GET", "/files/v2/media/system/local.storage/demo/statelink/state.sqlite"),
    ("GET", "/files/v2/media/system/local.storage//.agave-emulator/state.sqlite"),
    ("GET", "/files/v2/listings/system/local.storage/demo/../../.agave-emulator"),
    ("GET", "/files/v2/history/system/local.storage//.agave-emulator"),
    ("GET", "/files/v2/media/system/local.storage/demo/ok.txt%00.png"),
    ("GET", "/files/v2/listings/system/local.storage/demo/%00"),
    ("GET", "/files/v2/media/system/local.storage/demo/fifo"),
    ("GET", "/files/v2/media/system/local.storage/demo/%ff%fe"),
    ("DELETE", "/files/v2/media/system/local.storage/demo/../../.agave-emulator"),
    ("DELETE", "/files/v2/media/system/local.storage/demo/escape/secret.txt"),
    ("DELETE", "/files/v2/media/system/local.storage/demo/../bob/b.txt"),
    ("DELETE", "/files/v2/media/system/local.storage//"),
    ("DELETE", "/files/v2/media/system/local.storage//home"),
]


def test_traversal_attempts(setup):
    emu, api, outside = setup
    before, outside_before = tree(emu.root), tree(outside)
    for method, target in TRAVERSALS:
        status, _, body = raw(api, method, target)
        assert_clean(status, body, (400, 403, 404))
        assert b"OUTSIDE SECRET" not in body and b"root:" not in body and b"SQLite" not in body
    # the escaping links are not even listed; the in-root link to the state dir neither
    names = api.names("demo")
    assert "escape" not in names and "escape.txt" not in names and "statelink" not in names
    assert "fifo" not in names and "ok.txt" in names
    assert tree(emu.root) == before and tree(outside) == outside_before


def test_writes_through_escapes(setup):
    emu, api, outside = setup
    before, outside_before = tree(emu.root), tree(outside)
    attempts = [
        api.upload("demo/escape", "planted.txt", b"x"),
        api.upload("demo/statelink", "planted.txt", b"x"),
        api.upload("demo/statelink/staging", "planted.txt", b"x"),
        api.mkdir("demo/escape", "planted"),
        api.mkdir("demo", "../../../planted"),
        api.mkdir("demo", "statelink/planted"),
        api.manage("demo/ok.txt", "copy", "demo/escape/planted.txt"),
        api.manage("demo/ok.txt", "copy", "/.agave-emulator/planted"),
        api.manage("demo/ok.txt", "move", "../../../../planted"),
        api.manage("demo/ok.txt", "rename", "../escape/planted.txt"),
        api.manage("demo/escape.txt", "copy", "demo/stolen.txt"),
        api.manage("demo/escape", "copy", "demo/stolen"),
        api.s.post(api.files("pems", "demo/escape"), json={"username": "bob", "permission": "ALL"}, timeout=30),
    ]
    for r in attempts:
        assert_clean(r.status_code, r.content, (400, 403, 404))
    assert tree(emu.root) == before and tree(outside) == outside_before
    # an upload whose name tries to climb is stripped to its last component
    r = api.upload("demo", "../../../../escape/x.txt", b"stripped")
    assert r.status_code == 202 and r.json()["result"]["path"] == "/home/demo/x.txt"
    api.wait_length("demo/x.txt", 8)
    assert tree(outside) == outside_before


def test_malformed_requests_are_4xx_json(setup):
    emu, api, _ = setup
    media = "/files/v2/media/system/local.storage/demo"
    cases = [
        ("PUT", media, b"\xff\xfe\x00garbage", {"Content-Type": "application/x-www-form-urlencoded"}),
        ("PUT", media, b'{"action": null, "path": 3}', {"Content-Type": "application/json"}),
        ("PUT", media, b'{"action": ["mkdir"], "path": "x"}', {"Content-Type": "application/json"}),
        ("PUT", media, b'{"action": "mkdir", "path": {"a": 1}}', {"Content-Type": "application/json"}),
        ("PUT", media, b'{"action": "mkdir", "path": "\\ud800bad"}', {"Content-Type": "application/json"}),
        ("PUT", media, b'{"action": "copy", "path": "demo/\\udfff"}', {"Content-Type": "application/json"}),
        ("POST", "/files/v2/pems/system/local.storage/demo/ok.txt", b'{"username": "\\ud800", "permission": "READ"}',
         {"Content-Type": "application/json"}),
        ("POST", "/clients/v2", b'{"clientName": "x\\udfffy"}', {"Content-Type": "application/json",
                                                                   "Authorization": "Basic ZGVtbzpkZW1v"}),
        ("PUT", media, b"action=mkdir&path=x", {"Content-Type": "image/png"}),
        ("POST", media, b"garbage", {"Content-Type": "multipart/form-data"}),
        ("POST", media, b"garbage", {"Content-Type": "multipart/form-data; boundary=abc"}),
        ("POST", media, b"--abc\r\nContent-Disposition: form-data\r\n\r\nx\r\n--abc--",
         {"Content-Type": "multipart/form-data; boundary=abc"}),
        ("POST", media, b"--abc\r\nNo-Disposition: x\r\n\r\nx\r\n--abc--",
         {"Content-Type": "multipart/form-data; boundary=abc"}),
        ("POST", "/token", b"grant_type=password", {"Content-Type": "application/x-www-form-urlencoded"}),
        ("POST", "/clients/v2", b'{"clientName": 5}', {"Content-Type": "application/json",
                                                         "Authorization": "Basic !!!notbase64"}),
        ("POST", "/files/v2/pems/system/local.storage/demo/ok.txt", b'{"username": ["demo"]}',
         {"Content-Type": "application/json"}),
        ("GET", "/files/v2/listings/system/local.storage/demo?limit=1e9999", b"", {}),
        ("BREW", media, b"", {}),
        ("GET", "/files/v2/listings/system/local.storage/demo", b"", {"Authorization": "Bearer \x7f"}),
    ]
    for method, target, body, headers in cases:
        status, _, out = raw(api, method, target, body, headers)
        # a non-string action is an unknown action, as on the real server (asText() -> "")
        assert 400 <= status < 500 or (status == 501 and b"action" in body), (method, target, status, out[:200])
        assert b"Traceback" not in out
        if status != 401:
            assert json.loads(out)["status"] == "error"
    assert [p.name for p in emu.home().iterdir()].count("x") == 0


def test_protocol_errors_answer_json(setup):
    emu, api, _ = setup
    u = urllib.parse.urlsplit(api.url)
    for request in (b"NONSENSE\r\n\r\n", b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
                    b"GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n"):
        with socket.create_connection((u.hostname, u.port), timeout=10) as s:
            s.sendall(request)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split()[1])
        assert 400 <= status < 500, head
        assert json.loads(body)["status"] == "error"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_random_paths_never_500(sapi, path):
    api = sapi
    quoted = urllib.parse.quote(path, safe="")
    for target in (f"/files/v2/listings/system/local.storage/demo/{quoted}",
                   f"/files/v2/media/system/local.storage/{quoted}",
                   f"/files/v2/history//{quoted}"):
        status, _, body = raw(api, "GET", target)
        assert status in (200, 400, 403, 404, 501), (target, status, body[:200])
        assert b"Traceback" not in body


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                         max_size=3), max_leaves=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(action=st.sampled_from(["mkdir", "rename", "move", "copy", "MKDIR", "", "touch"]) | json_values,
       path=json_values, extra=st.dictionaries(st.text(max_size=8), json_values, max_size=2))
def test_random_manage_bodies_never_500(sapi, action, path, extra):
    sapi.mkdir("demo", "fuzz")
    body = {**extra, "action": action, "path": path}
    r = sapi.s.put(sapi.files("media", "demo/fuzz"), json=body, timeout=30)
    assert r.status_code in (200, 201, 400, 403, 404, 501), (body, r.status_code, r.text[:200])
    assert r.json()["status"] in ("success", "error")
