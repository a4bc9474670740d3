"""AgaveClient operations against the real emulator subprocess and its knobs."""

from __future__ import annotations

import logging
import os
import time
from urllib.parse import parse_qs

import pytest

from agavefs.client import AgaveClient, Credentials, StagingState
from agavefs.client.api import LIST_PAGE
from agavefs.client.transport import TLSError
from agavefs.errors import (AlreadyExists, IsADirectory, NotADirectory, NotFound, PermissionDenied,
                            TimedOut)
from client_support import client_for, run_login, splice_all, wait_stored
from helpers import paging

DATA = os.urandom(100_000)


@pytest.fixture
def client(emulator, tmp_path):
    with client_for(emulator, tmp_path / "cache") as c:
        yield c


def upload_bytes(c, tmp_path, remote_dir, name, data, *, wait=True):
    local = tmp_path / "upload.tmp"
    local.write_bytes(data)
    result = c.upload(str(local), remote_dir, name)
    assert result["status"] == "STAGING_QUEUED"
    if wait:
        assert wait_stored(c, f"{remote_dir.rstrip('/')}/{name}", len(data)) is StagingState.STORED
    return result


def test_operations_round_trip(client, emulator, tmp_path):
    c = client
    assert c.system_id and c.home_dir() == "/home"
    assert any(s["id"] == c.system_id for s in c.systems())
    assert c.system()["storage"]["homeDir"]
    assert c.mkdir("/home/demo/d") is True
    assert c.mkdir("/home/demo/d") is False
    upload_bytes(c, tmp_path, "/home/demo/d", "f.bin", DATA)
    me, kids = c.list("/home/demo/d")
    assert me.name == "d" and me.is_dir and me.path == "/home/demo/d"
    assert [(k.name, k.size, k.is_dir, k.path) for k in kids] == [("f.bin", len(DATA), False, "/home/demo/d/f.bin")]
    st = c.stat("/home/demo/d/f.bin")
    assert st.size == len(DATA) and st.mtime.tzinfo is not None and st.readable and st.writable
    assert c.read("/home/demo/d/f.bin", 0, len(DATA)) == DATA
    c.rename("/home/demo/d/f.bin", "g.bin")
    c.copy("/home/demo/d/g.bin", "/home/demo/d/h.bin")
    c.move("/home/demo/d/h.bin", "/home/demo/h.bin")
    assert sorted(k.name for k in c.list("/home/demo/d")[1]) == ["g.bin"]
    assert c.read("/home/demo/h.bin", 10, 20) == DATA[10:30]
    assert (emulator.home() / "h.bin").read_bytes() == DATA
    # errors carry the errno a filesystem reports
    with pytest.raises(AlreadyExists):
        c.mkdir("/home/demo/h.bin")
    with pytest.raises(AlreadyExists):
        c.rename("/home/demo/h.bin", "d")
    with pytest.raises(NotADirectory):
        c.list("/home/demo/h.bin")
    with pytest.raises(IsADirectory):
        c.read("/home/demo/d", 0, 10)
    with pytest.raises(NotFound):
        c.stat("/home/demo/nope")
    with pytest.raises(NotFound):
        c.read("/home/demo/nope", 0, 1)
    with pytest.raises(NotFound):
        c.delete("/home/demo/nope")
    c.delete("/home/demo/d")
    with pytest.raises(NotFound):
        c.stat("/home/demo/d/g.bin")
    events = c.history("/home/demo/h.bin")
    assert events and all("status" in e for e in events)
    snap = c.stats.snapshot()
    assert snap["requests"]["list"] >= 1 and snap["bytes_up"] >= len(DATA) and snap["bytes_down"] > 0


NAMES = ["a b", "#hash", "100%", "what?", "a+b", "x&y=1", "it's", 'say "hi"', "ünïcödé",
         "日本語", "tab\tname", "emoji 🎉", "semi;colon", "%2F", "~tilde", "-dash", ".hidden"]


def test_names_round_trip(emulator_factory, tmp_path):
    emulator = emulator_factory("--staging-delay", "0.05")
    with client_for(emulator, tmp_path / "cache") as c:
        _names_round_trip(c, emulator, tmp_path)


def _names_round_trip(c, emulator, tmp_path):
    c.mkdir("/home/demo/odd dir #1")
    for i, name in enumerate(NAMES):
        upload_bytes(c, tmp_path, "/home/demo/odd dir #1", name, name.encode() * (i + 1), wait=False)
    for i, name in enumerate(NAMES):
        assert wait_stored(c, f"/home/demo/odd dir #1/{name}", len(name.encode()) * (i + 1)) \
            is StagingState.STORED
    _, kids = c.list("/home/demo/odd dir #1")
    assert sorted(k.name for k in kids) == sorted(NAMES)
    on_disk = sorted(os.listdir(emulator.home() / "odd dir #1"))
    assert on_disk == sorted(NAMES)
    for i, name in enumerate(NAMES):
        path = f"/home/demo/odd dir #1/{name}"
        assert c.stat(path).name == name
        assert c.read(path, 0, 1000) == name.encode() * (i + 1)
    c.rename("/home/demo/odd dir #1/a b", "c?d#e%f")
    assert c.stat("/home/demo/odd dir #1/c?d#e%f").size == len("a b")
    # home-relative paths are the same files
    assert c.stat("demo/odd dir #1/c?d#e%f").path == "/home/demo/odd dir #1/c?d#e%f"
    assert {k.name for k in c.list("demo/odd dir #1")[1]} == {k.name for k in c.list("/home/demo/odd dir #1")[1]}


def test_backslash_in_an_uploaded_name(client, tmp_path):
    # agave-api.md section 5: fileName is the stored name, backslashes included
    client.upload(str(_local(tmp_path, b"x")), "/home/demo", "back\\slash")
    assert wait_stored(client, "/home/demo/back\\slash", 1, stall=3) is StagingState.STORED


def _local(tmp_path, data):
    p = tmp_path / "local.tmp"
    p.write_bytes(data)
    return p


def test_permissions(emulator_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("AGAVEFS_EMULATOR_DELETE_401", "1")
    emu = emulator_factory(users=(("demo", "demo"), ("other", "other")))
    (emu.home("other") / "secret.txt").parent.mkdir(parents=True, exist_ok=True)
    (emu.home("other") / "secret.txt").write_text("x")
    with client_for(emu, tmp_path / "cache") as c:
        with pytest.raises(PermissionDenied) as err:
            c.list("/home/other")
        assert err.value.errno == 13
        with pytest.raises(PermissionDenied):
            c.delete("/home/other/secret.txt")  # 401 with an Agave wrapper: EACCES, no refresh
        assert c.stats.refreshes == 0
    assert (emu.home("other") / "secret.txt").exists()


RANGE_CASES = [(0, 1000), (50_000, 1000), (99_000, 1000), (99_500, 1000), (99_999, 1),
               (100_000, 10), (250_000, 10), (0, 200_000)]


@pytest.mark.parametrize("mode", ["agave", "rfc", "ignore"])
def test_range_modes(emulator_factory, tmp_path, mode):
    emu = emulator_factory("--range-mode", mode)
    home = emu.home()
    home.mkdir(parents=True, exist_ok=True)
    (home / "r.bin").write_bytes(DATA)
    (home / "empty").write_bytes(b"")
    with client_for(emu, tmp_path / "cache") as c:
        size = len(DATA)
        for offset, n in RANGE_CASES:
            expect = DATA[offset:offset + n]
            assert c.read("/home/demo/r.bin", offset, n) == expect, (offset, n)
            assert c.read("/home/demo/r.bin", offset, n, file_size=size) == expect, (offset, n)
        for offset, end in [(0, None), (50_000, None), (99_999, None), (100_000, None),
                            (10, 20), (99_990, 150_000)]:
            with c.open_stream("/home/demo/r.bin", offset, end) as s:
                got = bytearray()
                while True:
                    chunk = s.read(7777)
                    if not chunk:
                        break
                    got += chunk
            last = size if end is None else min(end + 1, size)
            assert bytes(got) == DATA[offset:last], (offset, end)
        assert c.read("/home/demo/empty", 0, 10) == b""
        with c.open_stream("/home/demo/empty") as s:
            assert s.read() == b""


@pytest.mark.parametrize("mode", ["agave", "rfc", "ignore"])
def test_streams_splice_the_exact_bytes_into_pipes(emulator_factory, tmp_path, mode):
    """splice_into moves the body from the socket into a pipe (the server sends with
    sendfile): the same bytes as read, whatever the server does with ranges, including
    a whole-file answer skipped through to the offset first."""
    emu = emulator_factory("--range-mode", mode)
    home = emu.home()
    home.mkdir(parents=True, exist_ok=True)
    big = os.urandom(3 * 1024 * 1024 + 4321)
    (home / "big.bin").write_bytes(big)
    with client_for(emu, tmp_path / "cache") as c:
        for offset, end, step in [(0, None, 1 << 20), (12345, None, 512 * 1024), (1 << 20, 2 << 20, 7777),
                                  (len(big) - 10, None, 1 << 20), (len(big), None, 4096)]:
            with c.open_stream("/home/demo/big.bin", offset, end, file_size=len(big)) as s:
                got = splice_all(s, step)
            last = len(big) if end is None else end + 1
            assert got == big[offset:last], (mode, offset, end)
        # splicing and reading one stream in turns (a reader whose pipes ran out)
        r, w = os.pipe2(os.O_NONBLOCK)
        try:
            with c.open_stream("/home/demo/big.bin", 1000, file_size=len(big)) as s:
                parts, pos = [], 1000
                for i in range(12):
                    if i % 3 == 2:
                        part = s.read(100_000)
                    else:
                        n = s.splice_into(w, 100_000)
                        part = b"".join(iter(lambda: os.read(r, 1 << 20) if _readable(r) else b"", b""))
                        assert len(part) == n
                    parts.append(part)
                    pos += len(part)
                parts.append(s.read())
            assert b"".join(parts) == big[1000:], mode
        finally:
            os.close(r)
            os.close(w)


def _readable(fd: int) -> bool:
    import select
    return bool(select.select([fd], [], [], 0)[0])


def test_max_page_7_lists_everything(emulator_factory, tmp_path):
    emu = emulator_factory("--max-page", "7")
    big = emu.home() / "big"
    big.mkdir(parents=True)
    names = [f"f{i:03d}{'' if i % 3 else ' x'}" for i in range(250)]
    for n in names:
        (big / n).write_bytes(b"x")
    (emu.home() / "small").mkdir()
    (emu.home() / "small" / "only").write_bytes(b"y")
    with client_for(emu, tmp_path / "cache") as c:
        me, kids = c.list("/home/demo/big")
        got = [k.name for k in kids]
        assert len(got) == 250 and sorted(got) == sorted(names) and len(set(got)) == 250
        assert me.path == "/home/demo/big" and me.is_dir
        assert all(k.path == f"/home/demo/big/{k.name}" for k in kids)
        # each page parsed (and converted) while the next one is fetched: the same entries
        assert c.list("/home/demo/big", lambda e: (e.name, e.size)) == (me, [(n, 1) for n in got])
        assert [k.name for k in c.list("/home/demo/small")[1]] == ["only"]
        # history is paged the same way: 20 downloads + an upload over the file
        for _ in range(20):
            c.read("/home/demo/small/only", 0, 1)
        assert len(c.history("/home/demo/small/only")) >= 20
        upload_bytes(c, tmp_path, "/home/demo/small", "only", b"new content")
        assert c.read("/home/demo/small/only", 0, 100) == b"new content"
    big_lists = [parse_qs(e.get("query") or "") for e in emu.access_entries()
                 if "/listings/" in e.get("path", "") and e.get("path", "").endswith("/big")]
    assert max(int(q["limit"][0]) for q in big_lists) > 7  # the client asked for more than the cap
    assert len(big_lists) <= 2 * (250 // 6 + 4)  # listed twice, ~7 entries per page (one overlap)


def test_a_later_client_checks_the_page_length_it_is_told_once_and_probes_no_more(emulator_factory,
                                                                                   tmp_path):
    """What one client saw (a 251-entry page) saves the next one a probe per directory of
    equal short pages, after one check; told the same on a server that now caps pages at 7,
    the check fails and every listing is still complete."""
    emu = emulator_factory()
    big = emu.home() / "big"
    big.mkdir(parents=True)
    for i in range(250):
        (big / f"f{i:03d}").write_bytes(b"x")
    for d in range(5):
        (emu.home() / "t" / f"d{d}").mkdir(parents=True)
        for i in range(9):
            (emu.home() / "t" / f"d{d}" / f"g{i}").write_bytes(b"y")
    with client_for(emu, tmp_path / "cache") as first:
        assert len(first.list("/home/demo/big")[1]) == 250
        record = first.listing_pages()
    assert record == {"system": first.system_id, "path": "/home/demo/big", "offset": 0, "length": 251}

    def lists(entries, since):
        return [(e["path"].rsplit("/", 1)[-1], paging(e["query"])) for e in entries[since:]
                if "/files/v2/listings/" in e["path"]]

    with client_for(emu, tmp_path / "cache") as later, client_for(emu, tmp_path / "cache") as fresh:
        assert later.learn_listing_pages(record)
        before = len(emu.access_entries())
        for d in range(5):
            assert len(later.list(f"/home/demo/t/d{d}")[1]) == 9
        sent = lists(emu.settled_entries(), before)
        assert sorted(sent) == sorted([(f"d{d}", f"offset=0&limit={LIST_PAGE}") for d in range(5)]
                                      + [("big", "offset=0&limit=251")]), sent
        assert later.listing_pages() == record  # checked: kept for the next one
        before = len(emu.access_entries())
        for d in range(5):
            fresh.list(f"/home/demo/t/d{d}")
        assert len(lists(emu.settled_entries(), before)) == 10  # without it: a probe each

    capped = emulator_factory("--max-page", "7", root=emu.root)
    with client_for(capped, tmp_path / "cache2") as told:
        assert told.learn_listing_pages(record)
        kids = told.list("/home/demo/t/d0")[1]
        assert sorted(k.name for k in kids) == [f"g{i}" for i in range(9)]
        assert len(told.list("/home/demo/big")[1]) == 250
        assert told.listing_pages()["length"] == 7  # the failed hint is not passed on
    assert not told.learn_listing_pages({"system": "elsewhere", "path": "/x", "offset": 0, "length": 9})
    assert not told.learn_listing_pages({"path": "/x"}) and not told.learn_listing_pages(None)


def test_stat_with_children_is_one_request_with_the_first_entries(emulator_factory, tmp_path):
    emu = emulator_factory()
    d = emu.home() / "sw"
    d.mkdir(parents=True)
    for i in range(12):
        (d / f"k{i:02d}").write_bytes(b"z" * i)
    (d / "sub").mkdir()
    with client_for(emu, tmp_path / "cache") as c:
        before = len(emu.access_entries())
        me, kids, whole = c.stat_with_children("/home/demo/sw", 5)
        assert me.is_dir and me.path == "/home/demo/sw" and not whole
        assert len(kids) == 5 and all(k.path == f"/home/demo/sw/{k.name}" for k in kids)
        names = {k.name for k in kids}
        assert names <= {f"k{i:02d}" for i in range(12)} | {"sub"}
        assert all(k.size == int(k.name[1:]) for k in kids if not k.is_dir)
        me, kids, whole = c.stat_with_children("/home/demo/sw/k03", 5)
        assert not me.is_dir and me.size == 3 and kids == [] and not whole
        with pytest.raises(NotFound):
            c.stat_with_children("/home/demo/sw/none", 5)
        queries = [paging(e["query"]) for e in emu.settled_entries()[before:] if "/listings/" in e["path"]]
        assert queries == ["offset=0&limit=6"] * 3  # one request each
        # the page of 14 it got tells the client the server returns pages that long: a
        # listing whose page is shorter ends without a probe
        # (whole? a page of 14 for 21 asked may be the server's cap: not known yet)
        assert c.stat_with_children("/home/demo/sw", 20)[2] is False
        (emu.home() / "few").mkdir()
        for i in range(4):
            (emu.home() / "few" / f"p{i}").write_bytes(b"")
        before = len(emu.settled_entries())
        assert len(c.list("/home/demo/few")[1]) == 4
        assert len([e for e in emu.settled_entries()[before:] if "/listings/" in e["path"]]) == 1
        # by the same rule, the stat of a directory that small brings all of it
        before = len(emu.settled_entries())
        me, kids, whole = c.stat_with_children("/home/demo/few", 20)
        assert whole and sorted(k.name for k in kids) == [f"p{i}" for i in range(4)]
        assert len([e for e in emu.settled_entries()[before:] if "/listings/" in e["path"]]) == 1


def _listing_queries(emu, before: int) -> list[str]:
    return [paging(e["query"]) for e in emu.settled_entries()[before:] if "/listings/" in e["path"]]


def _thirty_files(emu, name: str):
    """A directory of 30 files e00..e29, of 0..29 bytes."""
    d = emu.home() / name
    d.mkdir(parents=True)
    for i in range(30):
        (d / f"e{i:02d}").write_bytes(b"x" * i)
    return d


def test_a_listing_right_after_a_lookup_continues_after_its_first_page(emulator_factory, tmp_path):
    """ls -l big/: the lookup's first page (stat_with_children) is the start of the
    listing that follows; the next page must repeat its last entry."""
    emu = emulator_factory()
    _thirty_files(emu, "cont")
    expected = [(f"e{i:02d}", i) for i in range(30)]
    with client_for(emu, tmp_path / "cache", page_size=10) as c:
        before = len(emu.settled_entries())
        me, kids, whole = c.stat_with_children("/home/demo/cont", 5)
        assert not whole and len(kids) == 5
        me2, listed = c.list("/home/demo/cont")
        assert me2.path == "/home/demo/cont"
        assert sorted((k.name, k.size) for k in listed) == expected
        assert len({k.name for k in listed}) == 30
        # the pages go on after item 5 (the head's last, repeated), never from 0 again
        assert _listing_queries(emu, before) == ["offset=0&limit=6", "offset=5&limit=10",
                                                 "offset=14&limit=10", "offset=23&limit=10"]
        # a head serves one listing: the next one starts over
        before = len(emu.settled_entries())
        assert len(c.list("/home/demo/cont")[1]) == 30
        assert _listing_queries(emu, before)[0] == "offset=0&limit=10"


def test_a_directory_shifted_since_the_lookup_is_listed_from_the_start(emulator_factory, tmp_path):
    emu = emulator_factory()
    d = _thirty_files(emu, "shift")
    with client_for(emu, tmp_path / "cache", page_size=10) as c:
        c.stat_with_children("/home/demo/shift", 5)
        (d / "a-first").write_bytes(b"")  # by someone else: every later index moves by one
        before = len(emu.settled_entries())
        names = sorted(k.name for k in c.list("/home/demo/shift")[1])
        assert names == sorted(["a-first"] + [f"e{i:02d}" for i in range(30)])
        queries = _listing_queries(emu, before)
        assert queries[:2] == ["offset=5&limit=10", "offset=0&limit=10"]


@pytest.mark.parametrize("change", ["mkdir", "rename", "delete", "upload", "too old"])
def test_a_kept_first_page_is_not_used_after_a_change_or_when_old(emulator_factory, tmp_path,
                                                                  monkeypatch, change):
    """Its entries could be older than what the client did meanwhile (or too old)."""
    from agavefs.client import api

    emu = emulator_factory()
    _thirty_files(emu, "chg")
    with client_for(emu, tmp_path / "cache", page_size=10) as c:
        c.stat_with_children("/home/demo/chg", 5)
        want = {f"e{i:02d}" for i in range(30)}
        if change == "mkdir":
            c.mkdir("/home/demo/elsewhere")  # any change, anywhere: this directory's too
        elif change == "rename":
            c.rename("/home/demo/chg/e01", "e01b")  # inside the head, no shift of what follows
            want = want - {"e01"} | {"e01b"}
        elif change == "delete":
            c.delete("/home/demo/chg/e03")
            want = want - {"e03"}
        elif change == "upload":
            upload_bytes(c, tmp_path, "/home/demo/chg", "e00b", b"new")
            want = want | {"e00b"}
        else:
            monkeypatch.setattr(api, "HEAD_MAX_AGE", 0.0)
        before = len(emu.settled_entries())
        assert {k.name for k in c.list("/home/demo/chg")[1]} == want
        assert _listing_queries(emu, before)[0] == "offset=0&limit=10"


def test_staging_delay_and_reupload(emulator_factory, tmp_path):
    emu = emulator_factory("--staging-delay", "1")
    with client_for(emu, tmp_path / "cache") as c:
        t0 = time.monotonic()
        upload_bytes(c, tmp_path, "/home/demo", "s.bin", b"v1" * 10, wait=False)
        assert c.staging_state("/home/demo/s.bin", 20) == StagingState.PENDING
        assert wait_stored(c, "/home/demo/s.bin", 20) is StagingState.STORED
        assert time.monotonic() - t0 >= 0.8
        # a re-upload: the earlier STAGING_COMPLETED must not count
        upload_bytes(c, tmp_path, "/home/demo", "s.bin", b"v2" * 15, wait=False)
        obs = c.staging_state("/home/demo/s.bin", 30)
        assert obs.state is StagingState.PENDING and obs.queued_key is not None
        assert wait_stored(c, "/home/demo/s.bin", 30) is StagingState.STORED
        assert c.read("/home/demo/s.bin", 0, 100) == b"v2" * 15


def test_lost_staging_job_is_detected_and_reuploaded(emulator_factory, tmp_path):
    emu = emulator_factory("--staging-delay", "5")
    with client_for(emu, tmp_path / "cache") as c:
        upload_bytes(c, tmp_path, "/home/demo", "lost.bin", DATA, wait=False)
        time.sleep(0.3)
        emu.restart("--staging-delay", "0.3")  # the in-memory queue dies with the server
        state = c.wait_staged("/home/demo/lost.bin", len(DATA), time.monotonic() + 20, stall_timeout=2)
        assert state in (StagingState.FAILED, StagingState.LOST)
        upload_bytes(c, tmp_path, "/home/demo", "lost.bin", DATA)
        assert c.read("/home/demo/lost.bin", 0, len(DATA)) == DATA


@pytest.mark.parametrize("knob, expected", [("AGAVEFS_EMULATOR_STAGING_FAIL", StagingState.FAILED),
                                            ("AGAVEFS_EMULATOR_STAGING_LOSE", StagingState.LOST)])
def test_failed_and_lost_jobs(emulator_factory, tmp_path, monkeypatch, knob, expected):
    monkeypatch.setenv(knob, "1")
    emu = emulator_factory("--staging-delay", "0.1")
    with client_for(emu, tmp_path / "cache") as c:
        upload_bytes(c, tmp_path, "/home/demo", "j.bin", b"data", wait=False)
        t0 = time.monotonic()
        assert c.wait_staged("/home/demo/j.bin", 4, time.monotonic() + 10, stall_timeout=1.0) is expected
        assert time.monotonic() - t0 < 5


def test_fail_rate_every_operation_still_succeeds(emulator_factory, tmp_path):
    emu = emulator_factory("--fail-rate", "0.3", "--staging-delay", "0.1")
    cache = tmp_path / "cache"
    r = run_login(emu.url, cache)
    assert r.returncode == 0, r.stderr
    with AgaveClient(Credentials.load(str(cache)), op_timeout=30) as c:
        for round_ in range(3):
            d = f"/home/demo/r{round_}"
            assert c.mkdir(d) is True
            upload_bytes(c, tmp_path, d, "f.bin", DATA)
            assert c.stat(f"{d}/f.bin").size == len(DATA)
            assert [k.name for k in c.list(d)[1]] == ["f.bin"]
            assert c.read(f"{d}/f.bin", 1000, 5000) == DATA[1000:6000]
            with c.open_stream(f"{d}/f.bin") as s:
                assert s.read() == DATA
            c.rename(f"{d}/f.bin", "g.bin")
            c.copy(f"{d}/g.bin", f"{d}/h.bin")
            c.move(f"{d}/h.bin", f"/home/demo/h{round_}.bin")
            c.delete(d)
            assert sorted(k.name for k in c.list("/home/demo")[1]) == [f"h{i}.bin" for i in range(round_ + 1)]
        assert c.stats.retries >= 5
    assert sum(1 for e in emu.access_entries() if e.get("status") == 503) >= 5


def test_latency_and_deadline(emulator_factory, tmp_path):
    emu = emulator_factory("--latency", "300")
    with client_for(emu, tmp_path / "cache") as c:
        t0 = time.monotonic()
        c.stat("/home/demo")
        assert time.monotonic() - t0 >= 0.29
    with client_for(emu, tmp_path / "cache", op_timeout=0.6, read_timeout=0.2) as c:
        t0 = time.monotonic()
        with pytest.raises(TimedOut) as err:
            c.stat("/home/demo")
        assert time.monotonic() - t0 < 2 and err.value.errno == 110
        assert c.stats.retries >= 1


def test_tls(emulator_factory, tmp_path, monkeypatch, caplog):
    emu = emulator_factory("--tls")
    assert emu.url.startswith("https://")
    cache = tmp_path / "cache"
    r = run_login(emu.url, cache, "demo")
    assert r.returncode == 3 and "--ca-bundle" in r.stderr and "Traceback" not in r.stderr
    r = run_login(emu.url, cache, "demo", "--insecure")
    assert r.returncode == 0 and "verification is OFF" in r.stderr
    r = run_login(emu.url, cache, "demo", "--ca-bundle", emu.ca_file)
    assert r.returncode == 0, r.stderr
    assert "verification is OFF" not in r.stderr
    creds = Credentials.load(str(cache))
    with AgaveClient(creds, ca_bundle=emu.ca_file) as c:
        assert c.stat("/home/demo").is_dir
    with AgaveClient(Credentials.load(str(cache))) as c:
        with pytest.raises(TLSError):
            c.stat("/home/demo")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", emu.ca_file)
    with AgaveClient(Credentials.load(str(cache))) as c:
        assert c.stat("/home/demo").is_dir
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    import agavefs.client.api as api

    monkeypatch.setattr(api, "_insecure_warned", False)
    with caplog.at_level(logging.WARNING, logger="agavefs.client"):
        with AgaveClient(Credentials.load(str(cache)), insecure=True) as c:
            assert c.stat("/home/demo").is_dir
    assert any("verification is OFF" in rec.getMessage() for rec in caplog.records)
