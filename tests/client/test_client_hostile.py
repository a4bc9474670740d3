"""The client against scripted broken or hostile servers (stdlib http.server stub).

Each test makes the stub misbehave in one way and checks that the client fails
cleanly (the right exception, never wrong bytes, no loop, no token sent astray)
or copes (fallbacks, retries).
"""

from __future__ import annotations

import json
import os
import time

import pytest

from agavefs.client import AgaveClient, Credentials
from agavefs.errors import (AlreadyExists, AuthError, PermissionDenied, ProtocolError, TimedOut,
                            Transient)
from client_stub import Stub, entry, wrap
from client_support import splice_all

DATA = bytes(range(256)) * 40  # 10240 bytes
LISTING = "/files/v2/listings/system/stub/"
MEDIA = "/files/v2/media/system/stub/"


@pytest.fixture
def stub():
    s = Stub().start()
    yield s
    s.stop()


def make_client(stub, tmp_path=None, **kw) -> AgaveClient:
    creds = Credentials(baseurl=stub.url, username="demo", apikey="KEY-abcdef",
                        apisecret="APISECRET-abcdef", access_token="ACCESS-abcdef-1",
                        refresh_token="REFRESH-abcdef-1", created_at=str(int(time.time())),
                        expires_in="3600")
    if tmp_path is not None:
        creds.save(str(tmp_path / "current"))
    kw.setdefault("op_timeout", 5)
    return AgaveClient(creds, system_id="stub", **kw)


def serve_file(data, *, short=0, content_range=True, status=200):
    """A media handler honouring bytes=a-b ranges, optionally sending `short` fewer bytes."""

    def handler(req, h):
        rng = req.headers.get("range")
        headers = {}
        body = data
        if rng:
            a, b = (int(x) for x in rng.split("=")[1].split("-"))
            body = data[a:b + 1]
            if content_range:
                headers["Content-Range"] = f"bytes {a}-{a + len(body) - 1}/{len(data)}"
        h.send_raw(status, body[: len(body) - short], headers=headers, length=len(body), close=True)

    return handler


# -- bodies ---------------------------------------------------------------------------------


def test_short_body_is_eio_never_wrong_bytes(stub):
    stub.route("GET", MEDIA, serve_file(DATA, short=7))
    with make_client(stub) as c:
        with pytest.raises(ProtocolError):
            c.read("/home/demo/f", 100, 1000, file_size=len(DATA))
        with pytest.raises(ProtocolError):
            with c.open_stream("/home/demo/f", 0, file_size=len(DATA)) as s:
                s.read()
        assert len(stub.seen("GET", MEDIA)) <= 8  # a few resumes, then the error


def short_once(calls: list):
    """A media handler whose first answer drops its last 100 bytes; ``calls`` gets each Range."""

    def flaky(req, h):
        calls.append(req.headers.get("range"))
        serve_file(DATA, short=100 if len(calls) == 1 else 0)(req, h)

    return flaky


def test_a_dropped_body_is_resumed_from_the_exact_byte(stub):
    calls = []
    stub.route("GET", MEDIA, short_once(calls))
    with make_client(stub) as c:
        assert c.read("/home/demo/f", 1000, 5000, file_size=len(DATA)) == DATA[1000:6000]
    assert calls == ["bytes=1000-5999", "bytes=5900-5999"]


def test_a_spliced_body_is_resumed_from_the_exact_byte_and_a_short_one_is_eio(stub):
    calls = []
    stub.route("GET", MEDIA, short_once(calls))
    with make_client(stub) as c:
        with c.open_stream("/home/demo/f", 1000, 5999, file_size=len(DATA)) as s:
            assert splice_all(s, 4096) == DATA[1000:6000]
    assert calls == ["bytes=1000-5999", "bytes=5900-5999"]
    stub.route("GET", MEDIA, serve_file(DATA, short=7))
    with make_client(stub) as c:
        with pytest.raises(ProtocolError):
            with c.open_stream("/home/demo/f", 0, file_size=len(DATA)) as s:
                splice_all(s, 4096)


def test_bodies_that_cannot_be_spliced_are_read(stub):
    """A chunked body (no length to count) or an encoded one is not spliced: splice_into
    says None, moves nothing, and read() still gets every byte."""
    def chunked(req, h):
        h.send_response(200)
        h.send_header("Transfer-Encoding", "chunked")
        h.send_header("Connection", "close")
        h.end_headers()
        for i in range(0, len(DATA), 4096):
            part = DATA[i:i + 4096]
            h.wfile.write(b"%x\r\n" % len(part) + part + b"\r\n")
        h.wfile.write(b"0\r\n\r\n")
        h.close_connection = True

    stub.route("GET", MEDIA, chunked)
    with make_client(stub) as c:
        r, w = os.pipe2(os.O_NONBLOCK)
        try:
            with c.open_stream("/home/demo/f", 0, file_size=len(DATA)) as s:
                assert s.splice_into(w, 4096) is None
                assert s.read() == DATA
            stub.route("GET", MEDIA, serve_file(DATA))  # identity, Content-Length: spliced
            with c.open_stream("/home/demo/f", 0, file_size=len(DATA)) as s:
                assert s.splice_into(w, 4096) == 4096
                assert os.read(r, 8192) == DATA[:4096]
        finally:
            os.close(r)
            os.close(w)


def test_mangled_content_range_falls_back_to_the_whole_file(stub):
    def mangled(req, h):
        rng = req.headers.get("range")
        if rng:  # answers a range starting at byte 0 whatever was asked
            a, b = (int(x) for x in rng.split("=")[1].split("-"))
            h.send_raw(206, DATA[0:b - a + 1], headers={"Content-Range": f"bytes 0-{b - a}/{len(DATA)}"},
                       close=True)
        else:
            h.send_raw(200, DATA, close=True)

    stub.route("GET", MEDIA, mangled)
    with make_client(stub) as c:
        assert c.read("/home/demo/f", 5000, 100) == DATA[5000:5100]
        with c.open_stream("/home/demo/f", 10000, file_size=len(DATA)) as s:
            assert s.read() == DATA[10000:]
    assert [r.headers.get("range") for r in stub.seen("GET")] == [
        "bytes=5000-5099", None, "bytes=10000-10239", None]


def test_a_server_ignoring_range_is_skipped_through(stub):
    stub.route("GET", MEDIA, lambda req, h: h.send_raw(200, DATA, close=True))
    with make_client(stub) as c:
        assert c.read("/home/demo/f", 3000, 50) == DATA[3000:3050]
        assert c.read("/home/demo/f", 10200, 500) == DATA[10200:]  # clamped by Content-Length
        assert c.read("/home/demo/f", 20000, 5) == b""


def test_negative_content_length_is_a_protocol_error(stub):
    stub.route("GET", MEDIA, lambda req, h: h.send_raw(200, b"abc", length=-5, close=True))
    with make_client(stub) as c:
        with pytest.raises((ProtocolError, Transient)):
            c.read("/home/demo/f", 0, 3)


# -- listings -------------------------------------------------------------------------------


def test_non_json_listing(stub):
    stub.route("GET", LISTING, lambda req, h: h.send_raw(200, b"<html>oops</html>", "text/html"))
    with make_client(stub) as c:
        with pytest.raises(ProtocolError):
            c.list("/home/demo")
        with pytest.raises(ProtocolError):
            c.stat("/home/demo")


@pytest.mark.parametrize("bad", [{"length": "ten"}, {"length": -1}, {"name": None},
                                 {"lastModified": "yesterday"}, {"permissions": ["ALL"]}])
def test_wrong_types_in_a_listing(stub, bad):
    def listing(req, h):
        h.send_json(200, wrap([entry(".", "/home/demo", kind="dir", length=4096),
                               dict(entry("x", "/home/demo/x"), **bad)]))

    stub.route("GET", LISTING, listing)
    with make_client(stub) as c:
        with pytest.raises(ProtocolError):
            c.list("/home/demo")


def test_result_of_the_wrong_shape(stub):
    stub.route("GET", LISTING, lambda req, h: h.send_json(200, wrap({"name": "x"})))
    with make_client(stub) as c:
        with pytest.raises(ProtocolError):
            c.list("/home/demo")


def test_hostile_names_are_dropped(stub):
    good = ["a b", "#hash", "ünïcode", "dup"]
    children = [entry(n, f"/home/demo/{n}") for n in good] + [
        entry("..", "/home"), entry(".", "/home/demo"), entry("a/b", "/home/demo/a/b"),
        entry("", "/home/demo/"), entry("dup", "/home/demo/dup"), entry("nul\0x", "/home/demo/nul"),
        entry("evil", "/etc/passwd")]

    def listing(req, h):
        items = [entry(".", "/home/demo", kind="dir", length=4096)] + children
        off, lim = int(req.query.get("offset", 0)), int(req.query.get("limit", 100))
        h.send_json(200, wrap(items[off:off + lim]))

    stub.route("GET", LISTING, listing)
    with make_client(stub) as c:
        me, kids = c.list("/home/demo")
    assert me.name == "demo" and me.is_dir
    assert [k.name for k in kids] == good + ["evil"]
    # paths are built from the directory and the name, never taken from the server
    assert {k.path for k in kids} == {f"/home/demo/{n}" for n in good + ["evil"]}


# -- redirects and auth -----------------------------------------------------------------------


def test_no_cross_host_redirect_with_the_token(stub):
    other = Stub().start()
    try:
        other.route("GET", "/", lambda req, h: h.send_json(200, wrap([])))
        stub.route("GET", LISTING, lambda req, h: h.send_raw(
            302, b"", headers={"Location": other.url + "/files/v2/listings/system/stub//home/demo"}))
        with make_client(stub) as c:
            with pytest.raises(ProtocolError, match="another host"):
                c.list("/home/demo")
        assert other.seen() == []
    finally:
        other.stop()


def test_same_host_redirect_is_followed(stub):
    stub.route("GET", LISTING + "/home/demo/old", lambda req, h: h.send_raw(
        301, b"", headers={"Location": LISTING + "/home/demo/new"}))
    stub.route("GET", LISTING + "/home/demo/new", lambda req, h: h.send_json(
        200, wrap([entry("new", "/home/demo/new")])))
    with make_client(stub) as c:
        assert c.stat("/home/demo/old").size == 10


def fault(req, h):
    h.send_json(401, {"fault": {"code": 900901, "message": "Invalid Credentials",
                                "description": "Access failure for API"}})


def test_fault_401_refreshes_once_and_retries(stub, tmp_path):
    def listing(req, h):
        if req.headers.get("authorization") != "Bearer ACCESS-new-2":
            return fault(req, h)
        h.send_json(200, wrap([entry("f", "/home/demo/f")]))

    stub.route("GET", LISTING, listing)
    stub.route("POST", "/token", lambda req, h: h.send_json(200, {
        "access_token": "ACCESS-new-2", "refresh_token": "REFRESH-new-2", "expires_in": 14400,
        "token_type": "bearer", "scope": "PRODUCTION"}))
    with make_client(stub, tmp_path) as c:
        assert c.stat("/home/demo/f").name == "f"
        assert c.stats.refreshes == 1
    saved = json.loads((tmp_path / "current").read_text())
    assert saved["access_token"] == "ACCESS-new-2" and saved["refresh_token"] == "REFRESH-new-2"
    token_call = stub.seen("POST", "/token")[0]
    assert b"refresh_token=REFRESH-abcdef-1" in token_call.body


def test_fault_after_a_refresh_is_eacces_without_a_loop(stub, tmp_path):
    stub.route("GET", LISTING, fault)
    stub.route("POST", "/token", lambda req, h: h.send_json(200, {
        "access_token": "ACCESS-new-3", "refresh_token": "REFRESH-new-3", "expires_in": 14400}))
    with make_client(stub, tmp_path) as c:
        with pytest.raises(AuthError) as err:
            c.stat("/home/demo/f")
    assert err.value.errno == 13
    assert len(stub.seen("POST", "/token")) == 1 and len(stub.seen("GET", LISTING)) == 2


def test_a_401_wrapper_is_eacces_without_refresh(stub, tmp_path):
    stub.route("DELETE", MEDIA, lambda req, h: h.send_json(
        401, wrap(None, "User does not have permission to delete", "error")))
    with make_client(stub, tmp_path) as c:
        with pytest.raises(PermissionDenied):
            c.delete("/home/other/x")
    assert stub.seen("POST", "/token") == [] and len(stub.seen("DELETE")) == 1


def test_failed_refresh_says_log_in_again(stub, tmp_path):
    stub.route("GET", LISTING, fault)
    stub.route("POST", "/token", lambda req, h: h.send_json(
        400, {"error": "invalid_grant", "error_description": "Provided Authorization Grant is invalid"}))
    with make_client(stub, tmp_path) as c:
        with pytest.raises(AuthError, match="agavefs login --base-url"):
            c.stat("/home/demo/f")
        for _ in range(3):  # the refused refresh token is not sent again
            with pytest.raises(AuthError, match="agavefs login --base-url"):
                c.stat("/home/demo/f")
        assert len(stub.seen("POST", "/token")) == 1
        # `agavefs login` (the same OAuth client) writes a new session: the next call takes it
        fresh = Credentials.load(str(tmp_path))
        fresh.access_token, fresh.refresh_token = "ACCESS-relogin-5", "REFRESH-relogin-5"
        fresh.created_at = str(int(time.time()))
        fresh.save()
        stub.route("GET", LISTING, lambda req, h: fault(req, h) if req.headers["authorization"] !=
                   "Bearer ACCESS-relogin-5" else h.send_json(200, wrap([entry("f", "/home/demo/f")])))
        assert c.stat("/home/demo/f").name == "f"
    assert len(stub.seen("POST", "/token")) == 1


def test_retry_after_is_honoured(stub):
    calls = []

    def throttled(req, h):
        calls.append(time.monotonic())
        if len(calls) == 1:
            h.send_json(429, wrap(None, "slow down", "error"), headers={"Retry-After": "1"})
        else:
            h.send_json(200, wrap([entry("f", "/home/demo/f")]))

    stub.route("GET", LISTING, throttled)
    with make_client(stub) as c:
        c.stat("/home/demo/f")
        assert c.stats.retries == 1
    assert calls[1] - calls[0] >= 0.95


def test_deadline_gives_timed_out(stub):
    stub.route("GET", LISTING, lambda req, h: h.send_json(503, wrap(None, "down", "error")))
    with make_client(stub, op_timeout=1.0) as c:
        t0 = time.monotonic()
        with pytest.raises(TimedOut) as err:
            c.stat("/home/demo/f")
        assert time.monotonic() - t0 < 2.5
    assert err.value.errno == 110


# -- uploads and non-idempotent actions ------------------------------------------------------


def test_upload_is_not_resent_when_the_outcome_is_unknown(stub, tmp_path):
    def vanish(req, h):
        h.close_connection = True  # whole body read, then no answer at all

    stub.route("POST", MEDIA, vanish)
    local = tmp_path / "up.bin"
    local.write_bytes(os.urandom(200_000))
    with make_client(stub) as c:
        with pytest.raises(Transient) as err:
            c.upload(str(local), "/home/demo", "up.bin")
    assert getattr(err.value, "ambiguous", False)
    assert len(stub.seen("POST", MEDIA)) == 1


def test_upload_is_resent_after_503(stub, tmp_path):
    calls = []

    def unavailable_once(req, h):
        calls.append(req)
        if len(calls) == 1:
            h.send_json(503, wrap(None, "unavailable", "error"))
        else:
            h.send_json(202, wrap({"name": "up.bin", "status": "STAGING_QUEUED"}))

    stub.route("POST", MEDIA, unavailable_once)
    local = tmp_path / "up.bin"
    local.write_bytes(b"x" * 5000)
    seen = []
    with make_client(stub) as c:
        result = c.upload(str(local), "/home/demo", "up.bin", progress=lambda a, b: seen.append((a, b)))
    assert result["status"] == "STAGING_QUEUED" and len(calls) == 2
    assert seen and seen[-1][0] == seen[-1][1]
    assert b'name="fileName"' in calls[1].body or calls[1].headers["content-type"].startswith(
        "multipart/form-data")


def test_rename_after_an_ambiguous_failure_checks_before_repeating(stub):
    state = {"renamed": False}

    def rename(req, h):
        state["renamed"] = True  # it happens, but the answer is lost in a 502
        h.send_json(502, wrap(None, "bad gateway", "error"))

    def listing(req, h):
        name = req.path.rsplit("/", 1)[1]
        exists = (name == "new") == state["renamed"]
        if exists:
            h.send_json(200, wrap([entry(name, f"/home/demo/{name}")]))
        else:
            h.send_json(404, wrap(None, "File/folder does not exist", "error"))

    stub.route("PUT", MEDIA, rename)
    stub.route("GET", LISTING, listing)
    with make_client(stub) as c:
        c.rename("/home/demo/old", "new")
    assert len(stub.seen("PUT")) == 1


def test_rename_onto_an_existing_name(stub):
    stub.route("PUT", MEDIA, lambda req, h: h.send_json(
        400, wrap(None, "Unable to rename: a file or folder named new already exists", "error")))
    with make_client(stub) as c:
        with pytest.raises(AlreadyExists):
            c.rename("/home/demo/old", "new")


def test_move_answered_200_but_not_done_is_an_error(stub):
    stub.route("PUT", MEDIA, lambda req, h: h.send_json(200, wrap({}, "Move success")))

    def listing(req, h):
        if req.path.endswith("/src"):
            h.send_json(200, wrap([entry("src", "/home/demo/src")]))
        else:
            h.send_json(404, wrap(None, "File/folder does not exist", "error"))

    stub.route("GET", LISTING, listing)
    with make_client(stub) as c:
        with pytest.raises(Transient, match="did not happen"):
            c.move("/home/demo/src", "/home/demo/dst")
    assert 1 < len(stub.seen("PUT")) <= 3


def test_netrc_never_replaces_the_bearer_token(stub, tmp_path, monkeypatch):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login intruder password nope\n")
    os.chmod(netrc, 0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    stub.route("GET", LISTING, lambda req, h: h.send_json(200, wrap([entry("f", "/home/demo/f")])))
    with make_client(stub) as c:
        c.stat("/home/demo/f")
    assert stub.seen("GET")[0].headers["authorization"] == "Bearer ACCESS-abcdef-1"


def test_staging_state_reads_a_long_capped_history_cheaply(stub):
    events = [{"status": "CREATED", "created": "t0", "description": "created"},
              {"status": "STAGING_QUEUED", "created": "t1", "description": "queued"},
              {"status": "STAGING_COMPLETED", "created": "t2", "description": "done"}]
    events += [{"status": "DOWNLOAD", "created": f"d{i}", "description": "dl"} for i in range(2000)]
    events += [{"status": "STAGING_QUEUED", "created": "t3", "description": "queued again"}]
    history = "/files/v2/history/system/stub/"

    def serve_history(req, h):
        off, lim = int(req.query.get("offset", 0)), min(7, int(req.query.get("limit", 100)))
        h.send_json(200, wrap(events[off:off + lim]))

    stub.route("GET", history, serve_history)
    stub.route("GET", LISTING, lambda req, h: h.send_json(200, wrap([entry("f", "/home/demo/f", length=5)])))
    with make_client(stub) as c:
        obs = c.staging_state("/home/demo/f", 5)
        assert obs.state.value == "pending" and obs.queued_key == ("STAGING_QUEUED", "t3", "queued again")
        first = len(stub.seen("GET", history))
        assert first <= 30  # O(log n) probes, not 2000 / 7 pages
        events.append({"status": "STAGING_COMPLETED", "created": "t4", "description": "done"})
        assert c.staging_state("/home/demo/f", 5).state.value == "stored"
        assert len(stub.seen("GET", history)) - first <= 3  # the cursor: only the tail
        # the whole history is still readable page by page
        assert len(c.history("/home/demo/f")) == len(events)


def test_upload_cut_while_sending_is_resent(stub, tmp_path):
    stub.cut_bodies = 1
    stub.route("POST", MEDIA, lambda req, h: h.send_json(202, wrap({"name": "big.bin",
                                                                    "status": "STAGING_QUEUED"})))
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(32 << 20))  # larger than socket buffers: the cut is seen mid-body
    with make_client(stub) as c:
        assert c.upload(str(local), "/home/demo", "big.bin")["status"] == "STAGING_QUEUED"
        assert c.stats.retries == 1
    posts = stub.seen("POST", MEDIA)
    assert len(posts) == 2 and posts[0].body == b"<cut>"


def test_a_new_login_in_the_cache_is_not_overwritten(stub, tmp_path):
    stub.route("GET", LISTING, lambda req, h: fault(req, h) if req.headers["authorization"] ==
               "Bearer ACCESS-abcdef-1" else h.send_json(200, wrap([entry("f", "/home/demo/f")])))
    stub.route("POST", "/token", lambda req, h: h.send_json(200, {
        "access_token": "ACCESS-new-9", "refresh_token": "REFRESH-new-9", "expires_in": 14400}))
    with make_client(stub, tmp_path) as c:
        other = Credentials.load(str(tmp_path))
        other.apikey, other.access_token = "ANOTHER-CLIENT", "ANOTHER-TOKEN"
        other.save()  # the user logged in again (another OAuth client) meanwhile
        c.stat("/home/demo/f")
        assert c.stats.refreshes == 1
    assert json.loads((tmp_path / "current").read_text())["access_token"] == "ANOTHER-TOKEN"


def test_queries_forms_and_headers_go_out_as_requests_encodes_them(stub):
    """The transport encodes query strings and form bodies itself (and gives requests
    nothing to merge): the bytes on the wire must be those requests would send."""
    import requests

    stub.route("GET", LISTING, lambda req, h: h.send_json(200, wrap([entry("a b,ü&=.txt", req.path)])))
    stub.route("PUT", MEDIA, lambda req, h: h.send_json(200, wrap({}, "Rename success")))
    client = make_client(stub)
    client.stat("/d/a b,ü&=.txt")
    client.rename("/d/x y", "nouveau nom ü&=+")
    listing = stub.seen("GET", LISTING)[0]
    want = requests.Request("GET", "http://h/", params={"offset": 0, "limit": 1,
                                                        "filter": listing.query["filter"]}).prepare()
    assert listing.raw_query == want.url.split("?", 1)[1]
    assert listing.query["filter"].split(",")[:2] == ["name", "path"]
    put = stub.seen("PUT", MEDIA)[0]
    form = requests.Request("PUT", "http://h/", data={"action": "rename", "path": "nouveau nom ü&=+"}).prepare()
    assert put.body == form.body.encode()
    assert put.headers["content-type"] == "application/x-www-form-urlencoded"
    for req in (listing, put):
        assert req.headers["user-agent"] == "agavefs-client"
        assert req.headers["authorization"] == "Bearer ACCESS-abcdef-1"
        assert req.headers["accept"] == "*/*"


def test_whole_answers_skip_the_requests_session_and_share_its_connections(stub, monkeypatch):
    """A request answered whole (listing, rename, delete) goes straight to the adapter's
    urllib3 pool: requests' preparing, merging and cookie jar cost more client CPU than
    urllib3 itself, 4 times per small file stored.  Streams still use the session, and
    both take their connections from the one pool."""
    import requests

    sessions = []
    real = requests.Session.request

    def counted(self, method, url, *a, **kw):
        sessions.append(method)
        return real(self, method, url, *a, **kw)

    monkeypatch.setattr(requests.Session, "request", counted)
    stub.route("GET", LISTING, lambda req, h: h.send_json(200, wrap([entry("f", req.path)])))
    stub.route("PUT", MEDIA, lambda req, h: h.send_json(200, wrap({}, "Rename success")))
    stub.route("DELETE", MEDIA, lambda req, h: h.send_json(200, wrap({}, "deleted")))
    stub.route("GET", MEDIA, serve_file(DATA))
    with make_client(stub) as c:
        assert c.stat("/d/f").name == "f"
        c.rename("/d/f", "g")
        c.delete("/d/g")
        assert sessions == []
        assert c.read("/home/demo/f", 1000, 5000, file_size=len(DATA)) == DATA[1000:6000]
        assert sessions == ["GET"]
        assert c.stat("/d/f").name == "f"
    # the stream's answer closes its connection (serve_file): what came before it was one
    seen = stub.seen("GET", LISTING)[:1] + stub.seen("PUT", MEDIA) + stub.seen("DELETE", MEDIA) \
        + stub.seen("GET", MEDIA)
    assert len(seen) == 4 and len({req.peer for req in seen}) == 1
    delete = stub.seen("DELETE", MEDIA)[0]
    assert delete.headers["content-length"] == "0"  # as requests sends a bodiless DELETE
    assert delete.headers["authorization"] == "Bearer ACCESS-abcdef-1"


def test_a_proxy_from_the_environment_carries_every_request(stub, monkeypatch):
    """HTTP_PROXY is read once, when the client starts, and every request (the
    per-thread sessions have no proxies of their own) goes through it."""
    monkeypatch.setenv("HTTP_PROXY", stub.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    stub.route("GET", LISTING, lambda req, h: h.send_json(200, wrap([entry("f", req.path)])))
    creds = Credentials(baseurl="http://agave.invalid", username="demo", apikey="K", apisecret="S",
                        access_token="ACCESS-abcdef-1", refresh_token="R",
                        created_at=str(int(time.time())), expires_in="3600")
    client = AgaveClient(creds, system_id="stub", op_timeout=5)
    assert client.stat("/d/f").name == "f"
    (req,) = stub.seen("GET", LISTING)
    assert req.target.startswith("http://agave.invalid/files/v2/listings/system/stub/")


def test_threads_share_the_connections(stub):
    """One connection pool for every thread's session: a thread's first request takes
    a connection another thread opened (a FUSE worker thread is new at a fresh mount,
    and threads come and go: each opened its own connection before its first answer)."""
    import threading

    stub.route("GET", LISTING, lambda req, h: h.send_json(200, wrap([entry("f", req.path)])))
    client = make_client(stub)
    done = threading.Event()

    def one(turn: threading.Event, mine: threading.Event) -> None:
        turn.wait(10)
        try:
            client.stat("/d/f")
        finally:
            mine.set()
            done.wait(10)  # alive until the end: its OS thread id is not reused

    events = [threading.Event() for _ in range(4)]
    threads = [threading.Thread(target=one, args=(events[i], events[i + 1])) for i in range(3)]
    try:
        for t in threads:
            t.start()
        events[0].set()  # one after the other, each from its own live thread
        assert events[3].wait(10)
        peers = {req.peer for req in stub.seen("GET", LISTING)}
        assert len(stub.seen("GET", LISTING)) == 3 and len(peers) == 1, peers
    finally:
        done.set()
        for t in threads:
            t.join(10)
        client.close()
