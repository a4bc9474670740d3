"""Pure parts of the client: paths, parsing, credentials file, paging, redaction.

No server here; everything that talks HTTP is tested against the emulator or the
hostile stub server in the other modules of this directory.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings, strategies as st

from agavefs.client.credentials import Credentials, format_expires_at, parse_expiry_text
from agavefs.client.models import RemoteEntry, StagingObservation, StagingState, parse_entry, parse_time
from agavefs.client.paging import PageCaps, PageThreads, collect, count_items
from agavefs.client.paths import SysPath, check_name
from agavefs.client.responses import Redactor, error_for, is_fault
from agavefs.errors import (AlreadyExists, AuthError, InvalidArgument, IsADirectory, NameTooLong,
                            NoSpace, NotFound, PermissionDenied, ProtocolError, Transient)

# -- paths -------------------------------------------------------------------------------


@pytest.mark.parametrize("name, encoded", [
    ("a b", "a%20b"), ("#", "%23"), ("%", "%25"), ("?", "%3F"), ("+", "%2B"), ("&", "%26"),
    ("'\"", "%27%22"), ("é", "%C3%A9"), ("日本", "%E6%97%A5%E6%9C%AC"), ("~x_y-z.", "~x_y-z."),
])
def test_segments_are_percent_encoded(name, encoded):
    assert SysPath.parse(f"/home/demo/{name}").url_part() == f"//home/demo/{encoded}"
    assert SysPath.parse(name).url_part() == f"/{encoded}"


def test_absolute_and_home_relative_forms():
    assert SysPath.parse("/home//demo/").url_part() == "//home/demo"
    assert str(SysPath.parse("/home//demo/")) == "/home/demo"
    assert SysPath.parse("demo/x").url_part() == "/demo/x"
    assert SysPath.parse("").url_part() == "/"
    assert SysPath.parse("/").url_part() == "//"
    assert str(SysPath.parse("/a/b").parent()) == "/a"
    assert str(SysPath.parse("b").parent()) == ""


@pytest.mark.parametrize("bad", ["/home/./x", "/home/../x", "..", ".", "a/\0b"])
def test_dot_segments_and_nul_are_refused(bad):
    with pytest.raises(InvalidArgument):
        SysPath.parse(bad)


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "a\0b", "\udcff"])
def test_bad_names_are_refused(bad):
    with pytest.raises(InvalidArgument):
        check_name(bad)


def test_long_names():
    check_name("x" * 255)
    check_name("é" * 127)  # 254 bytes
    with pytest.raises(NameTooLong):
        check_name("x" * 256)
    with pytest.raises(NameTooLong):
        check_name("é" * 128)  # 256 bytes


# -- parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("2017-07-20T13:28:30.000-05:00", datetime(2017, 7, 20, 18, 28, 30, tzinfo=timezone.utc)),
    ("2017-07-20T13:28:30Z", datetime(2017, 7, 20, 13, 28, 30, tzinfo=timezone.utc)),
    ("2017-07-20T13:28:30.123456789+0000", datetime(2017, 7, 20, 13, 28, 30, 123456, timezone.utc)),
    ("2017-07-20 13:28:30+05:30", datetime(2017, 7, 20, 7, 58, 30, tzinfo=timezone.utc)),
    ("2017-07-20T13:28:30", datetime(2017, 7, 20, 13, 28, 30, tzinfo=timezone.utc)),
    (1500557310000, datetime(2017, 7, 20, 13, 28, 30, tzinfo=timezone.utc)),
])
def test_parse_time(text, expected):
    got = parse_time(text)
    assert got.tzinfo is not None and got == expected


@pytest.mark.parametrize("bad", ["yesterday", "2017-13-45T00:00:00Z", None, True, [], "2017-07-20T13:28:30+99:00"])
def test_parse_time_rejects(bad):
    with pytest.raises(ProtocolError):
        parse_time(bad)


def _raw(**over):
    raw = {"name": "a b.txt", "path": "/home/demo/a b.txt", "lastModified": "2017-07-20T13:28:30.000-05:00",
           "length": 12, "permissions": "READ_WRITE", "format": "raw", "mimeType": "text/plain",
           "type": "file", "system": "s", "_links": {}}
    raw.update(over)
    return raw


def test_parse_entry():
    e = parse_entry(_raw())
    assert e == RemoteEntry("a b.txt", "/home/demo/a b.txt", False, 12, e.mtime, "READ_WRITE", "text/plain")
    assert e.readable and e.writable and not e.executable
    d = parse_entry(_raw(name=".", type="dir", length=4096, path="/home/demo/", permissions="READ"))
    assert d.is_dir and d.path == "/home/demo" and d.readable and not d.writable
    assert parse_entry(_raw(type=None, format="folder")).is_dir
    assert parse_entry(_raw(permissions="ALL")).writable


@pytest.mark.parametrize("over", [{"length": -1}, {"length": "12"}, {"length": True}, {"name": 5},
                                  {"lastModified": "soon"}, {"permissions": 7}, {"type": 3},
                                  {"length": 1.5}])
def test_parse_entry_rejects_wrong_types(over):
    with pytest.raises(ProtocolError):
        parse_entry(_raw(**over))
    with pytest.raises(ProtocolError):
        parse_entry("not an object")


def test_staging_observation_compares_with_its_state():
    obs = StagingObservation(StagingState.STORED, 3, ("STAGING_COMPLETED",), ("STAGING_QUEUED", "t", ""))
    assert obs == StagingState.STORED and obs != StagingState.PENDING
    assert obs.progress_key != StagingObservation(StagingState.PENDING, 2, (), None).progress_key


# -- errors ----------------------------------------------------------------------------------

def _body(message):
    return json.dumps({"status": "error", "message": message, "version": "2.2.27"}).encode()


@pytest.mark.parametrize("status, message, kind, cls", [
    (404, "File/folder does not exist", "", NotFound),
    (403, "denied", "", PermissionDenied),
    (401, "User does not have permission", "", PermissionDenied),
    (400, "Directory a already exists", "", AlreadyExists),
    (400, "File/folder does not exist", "", type(None)),
    (501, "Directory downloads not supported", "read", IsADirectory),
    (507, "", "", NoSpace),
    (400, "Quota exceeded for user", "", NoSpace),
    (503, "", "", Transient),
    (500, "boom", "", Transient),
])
def test_error_mapping(status, message, kind, cls):
    err = error_for(status, _body(message), "GET", "/home/demo/x", kind=kind)
    if cls is type(None):
        assert type(err).__name__ == "AgaveFSError"
    else:
        assert isinstance(err, cls)
    assert str(err).startswith("GET /home/demo/x")
    assert err.status == status


def test_faults_and_wrappers():
    assert is_fault(json.dumps({"fault": {"code": 900901}}).encode(), "application/json")
    assert is_fault(b"<ams:fault xmlns:ams='x'><ams:code>900903</ams:code></ams:fault>", "text/xml")
    assert is_fault(b"", None)
    assert not is_fault(_body("User does not have permission to delete"), "application/json")


def test_redactor_and_messages_never_carry_secrets():
    r = Redactor()
    r.add("sekrit-token-123", "pw-456789")
    text = r("echo sekrit-token-123 and pw-456789 Bearer abc.def https://h/x?token=zz")
    assert "sekrit" not in text and "pw-456789" not in text and "abc.def" not in text
    assert "zz" not in text
    err = error_for(400, _body("bad token sekrit-token-123"), "GET", "/x", redact=r)
    assert "sekrit" not in str(err)


# -- credentials ---------------------------------------------------------------------------------

AGAVE_CLI = {"tenantid": "agave.prod", "baseurl": "https://api.example.org", "devurl": "",
             "apisecret": "SECRET_abc", "apikey": "KEY_abc", "username": "demo",
             "access_token": "ACCESS_abc", "refresh_token": "REFRESH_abc",
             "created_at": "1700000000", "expires_in": "14400",
             "expires_at": "Tue Nov 14 22:13:20 UTC 2023"}


def _write(path, data, mode=0o600):
    path.write_text(json.dumps(data))
    os.chmod(path, mode)


def test_load_agave_cli_cache(tmp_path, monkeypatch):
    _write(tmp_path / "current", AGAVE_CLI)
    monkeypatch.setenv("AGAVE_CACHE_DIR", str(tmp_path))
    c = Credentials.load()
    assert (c.baseurl, c.username, c.apikey, c.access_token) == (
        "https://api.example.org", "demo", "KEY_abc", "ACCESS_abc")
    assert c.expiry() == datetime.fromtimestamp(1700014400, timezone.utc)
    assert "SECRET_abc" not in repr(c) and "ACCESS_abc" not in repr(c) and "REFRESH_abc" not in str(c)


@pytest.mark.parametrize("fields, expected", [
    ({"created_at": 1700000000, "expires_in": 14400}, 1700014400),  # agavepy Token (ints)
    ({"created_at": "", "expires_in": "", "expires_at": "Tue Nov 14 22:13:20 UTC 2023"}, 1700000000),
    ({"created_at": "", "expires_at": "Tue Nov 14 22:13:20 GMT 2023"}, 1700000000),
    ({"created_at": "", "expires_at": 1700000000}, 1700000000),
    ({"created_at": "", "expires_at": "2023-11-14T22:13:20Z"}, 1700000000),
    ({"created_at": "", "expires_at": "Tue Nov 14 22:13:20 +0000 2023"}, 1700000000),
])
def test_expiry_forms(fields, expected):
    c = Credentials.from_dict({**AGAVE_CLI, **fields})
    assert c.expiry().timestamp() == expected


def test_expiry_in_local_time_forms():
    # agavepy's Token writes time.ctime() (local time, no zone); agave-cli `date` a zone name
    epoch = 1700000000
    ctime = time.ctime(epoch)
    assert parse_expiry_text(ctime).timestamp() == epoch
    assert parse_expiry_text(format_expires_at(epoch)).timestamp() == epoch
    assert parse_expiry_text("garbage") is None and parse_expiry_text("") is None


def test_list_form_and_unknown_keys_survive_save(tmp_path):
    _write(tmp_path / "current", [dict(AGAVE_CLI, client_name="cli-client", verify=True)])
    c = Credentials.load(str(tmp_path))
    assert c.apikey == "KEY_abc"
    c.set_token({"access_token": "NEW_ACCESS", "refresh_token": "NEW_REFRESH", "expires_in": 100})
    c.save()
    data = json.loads((tmp_path / "current").read_text())
    assert data["access_token"] == "NEW_ACCESS" and data["refresh_token"] == "NEW_REFRESH"
    assert data["client_name"] == "cli-client"
    assert data["expires_in"] == "100" and data["created_at"].isdigit()
    assert set(AGAVE_CLI) <= set(data)
    assert stat.S_IMODE(os.stat(tmp_path / "current").st_mode) == 0o600
    assert Credentials.load(str(tmp_path)).seconds_left() == pytest.approx(100, abs=5)


def test_group_readable_cache_is_refused(tmp_path):
    path = tmp_path / "current"
    _write(path, AGAVE_CLI, mode=0o644)
    with pytest.raises(AuthError, match=f"chmod 600 {path}"):
        Credentials.load(str(tmp_path))


def test_missing_and_broken_cache(tmp_path):
    with pytest.raises(AuthError, match="agavefs login"):
        Credentials.load(str(tmp_path))
    (tmp_path / "current").write_text("{not json")
    os.chmod(tmp_path / "current", 0o600)
    with pytest.raises(AuthError, match="not valid JSON"):
        Credentials.load(str(tmp_path))


def test_save_is_atomic_and_private(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "current"
    c = Credentials.from_dict(AGAVE_CLI)
    c.save(str(target))
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(target.parent).st_mode) == 0o700
    # a failure while writing leaves the old file intact and no temp file behind
    before = target.read_bytes()

    def boom(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    c.access_token = "OTHER"
    with pytest.raises(OSError):
        c.save()
    assert target.read_bytes() == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["current"]


# -- paging ----------------------------------------------------------------------------------------


class FakeCollection:
    """A virtual list served with offset/limit, optionally capped or mutating."""

    def __init__(self, n, cap=None, ignore_offset=False):
        self.items = [{"name": f"e{i:04d}"} for i in range(n)]
        self.cap = cap
        self.ignore_offset = ignore_offset
        self.calls = []
        self.on_call = None

    def __call__(self, offset, limit):
        self.calls.append((offset, limit))
        if self.on_call:
            self.on_call(len(self.calls))
        if self.ignore_offset:
            offset = 0
        if self.cap:
            limit = min(limit, self.cap)
        return self.items[offset:offset + limit]


def _key(x):
    return x["name"]


@pytest.mark.parametrize("n", [0, 1, 6, 7, 8, 14, 99, 100, 101, 250])
@pytest.mark.parametrize("cap", [None, 1, 2, 7, 100])
def test_collect_pages_completely(n, cap):
    fake = FakeCollection(n, cap)
    got = collect(fake, PageCaps(), 100, key=_key)
    assert [x["name"] for x in got] == [x["name"] for x in fake.items]


def test_collect_learns_the_cap_and_stops_probing():
    caps = PageCaps()
    collect(FakeCollection(250, cap=7), caps, 100, key=_key)
    assert caps.cap == 7
    small = FakeCollection(5, cap=7)
    assert len(collect(small, caps, 100, key=_key)) == 5
    assert len(small.calls) == 1  # a short page below the known cap ends the listing


def test_collect_without_cap_probes_only_until_it_knows():
    caps = PageCaps()
    first = FakeCollection(10)
    collect(first, caps, 100, key=_key)
    assert len(first.calls) == 2  # one ambiguous short page, one probe
    second = FakeCollection(4)
    collect(second, caps, 100, key=_key)
    assert len(second.calls) == 1


def _hinted(big):
    """PageCaps with the hint an earlier client left: ``big`` returned 50-item pages."""
    caps = PageCaps()
    caps.hint(50, lambda n: len(big(0, n)))
    return caps


def test_a_hint_that_checks_out_ends_equal_short_pages_without_probes():
    big = FakeCollection(200)
    caps = _hinted(big)
    smalls = [FakeCollection(10) for _ in range(6)]
    for small in smalls:
        assert len(collect(small, caps, 100, key=_key, source="d")) == 10
    assert [len(s.calls) for s in smalls] == [1] * 6  # no probe at all
    assert big.calls == [(0, 50)]  # the one check: the same page, fetched again
    assert caps.hint_ok is True and caps.max_seen == 50
    assert caps.longest == (10, ("d", 0))  # what this client saw itself


def test_without_a_hint_the_same_directories_cost_a_probe_each():
    caps = PageCaps()
    smalls = [FakeCollection(10) for _ in range(6)]
    for small in smalls:
        collect(small, caps, 100, key=_key)
    assert [len(s.calls) for s in smalls] == [2] * 6


@pytest.mark.parametrize("why", ["lower cap", "shrunk", "error"])
def test_a_hint_that_does_not_check_out_is_dropped_and_nothing_is_hidden(why):
    """The server lowered its cap to 10 since (or the page is gone): a 10-item page must
    not be taken for the end of a 30-item directory."""
    cap = 10 if why == "lower cap" else None
    big = FakeCollection(200 if why != "shrunk" else 20, cap=cap)
    if why == "error":
        def boom(offset, limit):
            raise ConnectionError("gone")
        big = boom
    caps = PageCaps()
    caps.hint(50, lambda n: len(big(0, n)))
    listed = FakeCollection(30, cap=cap)
    assert [x["name"] for x in collect(listed, caps, 100, key=_key)] == [x["name"] for x in listed.items]
    assert caps.hint_ok is False
    if why == "lower cap":
        assert caps.cap == 10
        exact = FakeCollection(10, cap=cap)  # a page as long as the cap is still probed
        collect(exact, caps, 100, key=_key)
        assert len(exact.calls) == 2


def test_a_hint_is_checked_once_while_many_threads_wait_for_it():
    import threading
    checks = []
    gate = threading.Event()

    def check(n):
        checks.append(n)
        gate.wait(5)
        return n

    caps = PageCaps()
    caps.hint(50, check)
    smalls = [FakeCollection(10) for _ in range(8)]
    threads = [threading.Thread(target=collect, args=(s, caps, 100), kwargs={"key": _key}) for s in smalls]
    for t in threads:
        t.start()
    time.sleep(0.2)
    gate.set()
    for t in threads:
        t.join(10)
    assert checks == [50]
    assert [len(s.calls) for s in smalls] == [1] * 8


def test_a_hint_no_longer_than_the_page_is_kept_for_later():
    big = FakeCollection(200)
    caps = _hinted(big)
    collect(FakeCollection(60), caps, 100, key=_key)  # 60 > 50: the hint settles nothing
    assert big.calls == [] and caps.hint_ok is None
    collect(FakeCollection(10), caps, 100, key=_key)  # 10 < 60 seen: the end, no check either
    assert big.calls == []


# any cap (or none), any hint an earlier client left, the page length asked, listings
SERVERS = dict(cap=st.one_of(st.none(), st.integers(1, 40)),
               hint=st.one_of(st.none(), st.integers(2, 120)),
               big=st.integers(0, 150),
               limit=st.integers(2, 60),
               sizes=st.lists(st.integers(0, 130), min_size=1, max_size=6))


@settings(max_examples=300, deadline=None)
@given(**SERVERS)
def test_collect_is_complete_whatever_the_server_and_the_hint(cap, hint, big, limit, sizes):
    """Any cap (or none), any hint an earlier client left (true, stale or about a page
    that is gone), any page size asked for: every listing is complete and in order."""
    caps = PageCaps()
    if hint is not None:
        source = FakeCollection(big, cap)
        caps.hint(hint, lambda n: len(source(0, n)))
    for n in sizes:
        fake = FakeCollection(n, cap)
        got = collect(fake, caps, limit, key=_key, source="d")
        assert [x["name"] for x in got] == [x["name"] for x in fake.items]
        assert len(fake.calls) <= n // max(1, min(limit, cap or limit) - 1) + 3  # no runaway


@settings(max_examples=150, deadline=None)
@given(**SERVERS)
def test_pipelined_paging_sends_the_same_requests(pages_pool, cap, hint, big, limit, sizes):
    """A page converted while the next is fetched (convert + submit): the same requests
    in the same order as page after page, and every item converted once, in order."""
    plain, piped = PageCaps(), PageCaps()
    if hint is not None:
        for caps in (plain, piped):
            source = FakeCollection(big, cap)
            caps.hint(hint, lambda n, source=source: len(source(0, n)))
    for n in sizes:
        a, b = FakeCollection(n, cap), FakeCollection(n, cap)
        want = collect(a, plain, limit, key=_key, source="d")
        got = collect(b, piped, limit, key=_key, source="d", submit=pages_pool.submit,
                      convert=lambda items, index: [(index + i, x["name"].upper()) for i, x in enumerate(items)])
        assert got == [(i, x["name"].upper()) for i, x in enumerate(want)]
        assert b.calls == a.calls


def test_the_next_page_is_on_its_way_while_a_page_is_converted(pages_pool):
    fake = FakeCollection(25)
    asked = {k: threading.Event() for k in (2, 3)}
    fake.on_call = lambda call: asked[call].set() if call in asked else None
    waited = []

    def convert(items, index):
        # page k is converted only once page k+1 has been asked for (they overlap)
        waited.append(asked[len(waited) + 2].wait(10) if len(waited) < 2 else None)
        return [x["name"] for x in items]

    got = collect(fake, PageCaps(), 10, key=_key, convert=convert, submit=pages_pool.submit)
    assert got == [x["name"] for x in fake.items]
    assert waited == [True, True, None]
    assert fake.calls == [(0, 10), (9, 10), (18, 10)]


class _Item(dict):
    """A raw listing item that a weak reference can watch."""

    __slots__ = ("__weakref__",)


@pytest.mark.parametrize("piped", [False, True])
def test_a_converted_listing_lets_go_of_its_raw_pages(pages_pool, piped):
    """With ``convert`` only what it returns is kept: the raw items of a page die once
    the page is converted (a big listing's decoded JSON is 5-10 times its entries'
    size), except the last one, which the next page must repeat.  So when a page is
    asked for, at most the previous page (being converted meanwhile, when pipelined)
    and the last item of the one before are still alive."""
    import gc
    import weakref

    handed: list[weakref.ref] = []  # every raw item the server has sent

    def fetch(offset, limit):
        gc.collect()
        alive = sum(r() is not None for r in handed)
        assert alive <= (limit if piped else 0) + 1, (offset, alive)
        page = [_Item(name=f"e{i:04d}") for i in range(offset, min(60, offset + limit))]
        handed.extend(weakref.ref(x) for x in page)
        return page

    got = collect(fetch, PageCaps(), 10, key=_key, submit=pages_pool.submit if piped else None,
                  convert=lambda items, index: [x["name"] for x in items])
    assert got == [f"e{i:04d}" for i in range(60)]
    assert len(handed) > 60  # the pages overlap by one item: several were fetched
    gc.collect()
    assert all(r() is None for r in handed)


def test_pipelined_paging_restarts_when_the_list_shifts(pages_pool):
    fake = FakeCollection(30)
    starts = []

    def mutate(call):
        if call == 2:  # between page 1 and 2: an entry before the offset disappears
            del fake.items[3]

    def convert(items, index):
        starts.append(index)
        return [x["name"] for x in items]

    fake.on_call = mutate
    got = collect(fake, PageCaps(), 10, key=_key, convert=convert, submit=pages_pool.submit)
    assert got == [x["name"] for x in fake.items]
    assert starts.count(0) == 2  # the restart converts from the first item again


def test_pipelined_paging_raises_a_failed_page(pages_pool):
    fake = FakeCollection(30)

    def fail(call):
        if call == 3:
            raise ConnectionError("page 3 lost")

    fake.on_call = fail
    with pytest.raises(ConnectionError, match="page 3 lost"):
        collect(fake, PageCaps(), 10, key=_key, convert=lambda items, index: items, submit=pages_pool.submit)


@pytest.fixture(scope="module")
def pages_pool():
    pool = PageThreads(2, "test-pages")
    yield pool
    pool.close()


def test_page_threads_answer_raise_and_after_close_run_inline():
    pool = PageThreads(2, "t-pages")
    assert [pool.submit(pow, 2, k).result(5) for k in range(5)] == [1, 2, 4, 8, 16]
    with pytest.raises(ZeroDivisionError):
        pool.submit(divmod, 1, 0).result(5)
    names = {pool.submit(lambda: threading.current_thread().name).result(5) for _ in range(20)}
    assert names <= {"t-pages-0", "t-pages-1"}  # long-lived: the same threads every time
    pool.close()
    assert pool.submit(lambda: threading.current_thread().name).result(0) == threading.current_thread().name


def test_a_page_stuck_on_a_dead_server_does_not_hold_up_exit():
    code = ("import time; from agavefs.client.paging import PageThreads\n"
            "p = PageThreads(2, 'x'); p.submit(time.sleep, 120); time.sleep(0.2); print('bye')")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "bye", r.stderr
    assert time.monotonic() - t0 < 30


def test_collect_restarts_when_the_list_shifts():
    fake = FakeCollection(30)

    def mutate(call):
        if call == 2:  # between page 1 and 2: an entry before the offset disappears
            del fake.items[3]

    fake.on_call = mutate
    got = collect(fake, PageCaps(), 10, key=_key)
    assert [x["name"] for x in got] == [x["name"] for x in fake.items]


def test_collect_survives_a_server_ignoring_offset():
    fake = FakeCollection(50, ignore_offset=True)
    got = collect(fake, PageCaps(), 10, key=_key)
    assert len(got) == 10 and len(fake.calls) < 20
    fake2 = FakeCollection(50, ignore_offset=True)
    got2 = collect(fake2, PageCaps(), 10, key=_key, dedupe=False)
    assert len(fake2.calls) < 20 and len(got2) <= 20


@pytest.mark.parametrize("n", [0, 1, 5, 99, 100, 101, 499, 500, 501, 1234, 5000])
@pytest.mark.parametrize("cap", [None, 7])
def test_count_items(n, cap):
    fake = FakeCollection(n, cap)
    count, first = count_items(fake, PageCaps(), 100)
    assert count == n
    assert len(fake.calls) <= 4 + 2 * max(1, n).bit_length()
