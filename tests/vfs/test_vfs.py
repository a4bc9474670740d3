"""The VFS without FUSE and without HTTP, over the in-memory backend.

These run in milliseconds, so they cover the write-back's corner cases that are
slow or racy to reach through a real mount (supersession, crash recovery, lost
staging, a full spool).  The same behaviours are checked through the mount against
the emulator in tests/mount/.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time

import pytest

from agavefs.errors import AgaveFSError
from memory_backend import MemoryBackend


@pytest.fixture
def backend():
    return MemoryBackend(staging_delay=0.05)


def write_file(vfs, path, data, offset=0, create=True):
    fh = vfs.create(path) if create else vfs.open(path, os.O_WRONLY)
    vfs.write(fh, data, offset)
    vfs.release(fh)


def read_file(vfs, path):
    fh = vfs.open(path, os.O_RDONLY)
    try:
        size = vfs.getattr(path)["st_size"]
        return vfs.read(fh, 0, size + 10)
    finally:
        vfs.release(fh)


def test_read_your_writes_then_stored(backend, make_vfs):
    backend.staging_delay = 0.3
    vfs = make_vfs(backend)
    write_file(vfs, "/new.txt", b"hello")
    assert "/new.txt" not in backend.files  # still staging
    assert vfs.getattr("/new.txt")["st_size"] == 5
    assert read_file(vfs, "/new.txt") == b"hello"
    assert [n for n, _ in vfs.readdir("/")][2:] == ["new.txt"]
    assert vfs.drain(timeout=10)
    assert backend.files["/new.txt"] == b"hello"
    # no temporary name is left behind, and none is ever listed
    assert list(backend.files) == ["/new.txt"]
    assert vfs.status()["spool_bytes"] == 0


def test_ls_l_costs_only_the_listing(backend, make_vfs):
    for i in range(50):
        backend.put(f"/d/f{i:03d}", b"x" * i)
    vfs = make_vfs(backend)
    names = [n for n, _ in vfs.readdir("/d")][2:]
    assert len(names) == 50
    before = dict(backend.calls)
    for name in names:
        vfs.getattr(f"/d/{name}")
    for probe in (".Trash", ".Trash-1000", ".hidden", "._x", "desktop.ini"):
        with pytest.raises(AgaveFSError) as exc:
            vfs.getattr(f"/d/{probe}")
        assert exc.value.errno == errno.ENOENT
    assert backend.calls == before


def test_rewrite_supersedes_and_newest_wins(backend, make_vfs):
    backend.staging_delay = 0.2
    vfs = make_vfs(backend)
    for i in range(5):
        write_file(vfs, "/f", f"version {i}".encode())
    assert read_file(vfs, "/f") == b"version 4"
    assert vfs.drain(timeout=10)
    assert backend.files == {"/f": b"version 4"}


def test_unlink_pending_cancels_upload(backend, make_vfs):
    backend.staging_delay = 0.3
    vfs = make_vfs(backend)
    write_file(vfs, "/gone", b"data")
    vfs.unlink("/gone")
    with pytest.raises(AgaveFSError):
        vfs.getattr("/gone")
    assert vfs.drain(timeout=10)
    assert backend.files == {}


def test_rename_pending_retargets(backend, make_vfs):
    backend.staging_delay = 0.2
    vfs = make_vfs(backend)
    vfs.mkdir("/sub")
    write_file(vfs, "/a", b"AAA")
    vfs.rename("/a", "/sub/b")
    assert read_file(vfs, "/sub/b") == b"AAA"
    assert vfs.drain(timeout=10)
    assert backend.files == {"/sub/b": b"AAA"}


def test_rename_over_existing_replaces(backend, make_vfs):
    backend.put("/target", b"old")
    backend.put("/src", b"new content")
    vfs = make_vfs(backend)
    vfs.rename("/src", "/target")
    assert backend.files == {"/target": b"new content"}
    assert read_file(vfs, "/target") == b"new content"


def test_rename_dir_over_empty_dir(backend, make_vfs):
    backend.put("/src/f", b"kept")
    backend.mkdir("/dst")
    backend.put("/full/g", b"g")
    vfs = make_vfs(backend)
    with pytest.raises(AgaveFSError) as exc:
        vfs.rename("/src", "/full")
    assert exc.value.errno == errno.ENOTEMPTY
    vfs.rename("/src", "/dst")
    assert backend.files == {"/dst/f": b"kept", "/full/g": b"g"}
    assert backend.dirs == {"/", "/dst", "/full"}  # no directory left aside


def test_rename_dir_over_empty_dir_keeps_it_when_the_source_is_gone(backend, make_vfs):
    """The cache still shows a source that another client (or a request of ours that
    timed out and was carried out late) moved away: the empty target must survive."""
    backend.mkdir("/src")
    backend.mkdir("/dst")
    vfs = make_vfs(backend, attr_ttl=60, dir_ttl=60)
    assert sorted(n for n, _ in vfs.readdir("/")) == [".", "..", "dst", "src"]
    backend.rename("/src", "elsewhere")  # behind the mount's back
    with pytest.raises(AgaveFSError) as exc:
        vfs.rename("/src", "/dst")
    assert exc.value.errno == errno.ENOENT
    assert backend.dirs == {"/", "/dst", "/elsewhere"}


def test_a_change_that_timed_out_forgets_the_cached_paths(backend, make_vfs):
    backend.mkdir("/a")
    backend.mkdir("/b")
    vfs = make_vfs(backend, attr_ttl=60, dir_ttl=60, negative_ttl=60)
    vfs.readdir("/")
    vfs.readdir("/b")
    backend.fail_next["move"] = 1
    backend.fail_next["rename"] = 1
    with pytest.raises(AgaveFSError) as exc:
        vfs.rename("/a", "/b/a")
    assert exc.value.errno in (errno.EIO, errno.ETIMEDOUT)
    backend.move("/a", "/b/a")  # the server carried it out after all
    lists = backend.calls.get("list", 0)
    assert vfs.getattr("/b/a")["st_mode"] & 0o40000
    with pytest.raises(AgaveFSError) as exc:
        vfs.getattr("/a")
    assert exc.value.errno == errno.ENOENT
    assert backend.calls.get("list", 0) + backend.calls.get("stat", 0) > lists


def test_reader_opened_before_the_writer_left_keeps_the_content(backend, make_vfs):
    """fsync lands the file while it is open; a reader opens it (from the spool); the
    writer closes, which used to drop the file's local state under the reader: an
    fstat then said size 0 (and the kernel, trusting it, read nothing)."""
    vfs = make_vfs(backend)
    wfh = vfs.create("/f")
    vfs.write(wfh, b"x" * 10, 0)
    vfs.fsync(wfh)
    assert backend.files == {"/f": b"x" * 10}
    rfh = vfs.open("/f", os.O_RDONLY)
    vfs.flush(wfh)
    vfs.release(wfh)
    assert vfs.drain(timeout=10)
    assert vfs.getattr(None, rfh)["st_size"] == 10
    assert vfs.getattr("/f")["st_size"] == 10
    assert vfs.read(rfh, 0, 100) == b"x" * 10
    vfs.release(rfh)
    assert not vfs.nodes  # the last reader let it go
    assert vfs.getattr("/f")["st_size"] == 10


def test_fstat_of_a_remote_file_open_for_reading(backend, make_vfs):
    backend.put("/r", b"abc")
    vfs = make_vfs(backend)
    fh = vfs.open("/r", os.O_RDONLY)
    mtime = vfs.getattr("/r")["st_mtime"]
    attrs = vfs.getattr(None, fh)
    assert attrs["st_size"] == 3 and attrs["st_mtime"] == mtime
    vfs.release(fh)


def test_drain_waits_for_cancelled_uploads_to_delete_their_files(backend, make_vfs):
    """An unmount right after a pending upload was superseded must not leave the
    cancelled version's hidden temporary file on the server (the model test found
    one in the backing directory after `agavefs umount`)."""
    backend.staging_delay = 0.3
    vfs = make_vfs(backend)
    write_file(vfs, "/a", b"A" * 10)
    deadline = time.monotonic() + 10
    while not backend.staging and time.monotonic() < deadline:
        time.sleep(0.01)
    assert backend.staging  # sent; the server is staging it
    vfs.unlink("/a")
    assert vfs.drain(timeout=10)
    vfs.close(wait=True)  # what the daemon does next at an unmount
    time.sleep(0.5)  # past the staging delay: whatever was still staged has landed now
    with backend.lock:
        backend._land()
        assert backend.files == {} and backend.staging == {}


def test_a_reader_of_a_remote_file_follows_it(backend, make_vfs):
    """A descriptor names a file, not a path: one opened for reading before another
    process writes the file reads what was written (the kernel's page cache of the
    inode already has those pages: a miss must not mix in the server's old bytes),
    follows renames, and keeps reading its own file when another is renamed over it
    (never the other file)."""
    backend.put("/f", b"old content")
    backend.put("/g", b"gg")
    backend.put("/x", b"xxx")
    backend.put("/y", b"yyy")
    vfs = make_vfs(backend)
    rf, rg, rx = (vfs.open(p, os.O_RDONLY) for p in ("/f", "/g", "/x"))
    wf = vfs.open("/f", os.O_WRONLY)
    vfs.write(wf, b"NEW", 0)
    assert vfs.read(rf, 0, 100) == b"NEW content"
    vfs.release(wf)
    assert vfs.drain(timeout=10)
    assert vfs.read(rf, 0, 100) == b"NEW content"
    vfs.rename("/g", "/h")
    assert vfs.read(rg, 0, 100) == b"gg"  # from /h now
    vfs.rename("/y", "/x")
    assert vfs.read(rx, 0, 100) == b"xxx"  # /x is y's content now: this descriptor's file is aside
    for fh in (rf, rg, rx):
        vfs.release(fh)
    assert not vfs.nodes
    assert backend.files == {"/f": b"NEW content", "/h": b"gg", "/x": b"yyy"}


def test_editor_save_pattern(backend, make_vfs):
    """write temp, fsync, rename over the original."""
    backend.put("/doc.txt", b"original")
    vfs = make_vfs(backend)
    fh = vfs.create("/.doc.txt.swp")
    vfs.write(fh, b"edited text", 0)
    vfs.fsync(fh)
    assert backend.files["/.doc.txt.swp"] == b"edited text"
    vfs.release(fh)
    vfs.rename("/.doc.txt.swp", "/doc.txt")
    assert vfs.drain(timeout=10)
    assert backend.files == {"/doc.txt": b"edited text"}


def test_open_existing_fetches_lazily_and_keeps_the_rest(backend, make_vfs):
    backend.put("/big", bytes(range(256)) * 4)
    vfs = make_vfs(backend)
    fh = vfs.open("/big", os.O_WRONLY)
    vfs.release(fh)
    assert backend.calls.get("stream", 0) == 0  # opened for writing, nothing written: no download
    fh = vfs.open("/big", os.O_RDWR)
    vfs.write(fh, b"XY", 10)
    assert vfs.read(fh, 8, 6) == bytes([8, 9]) + b"XY" + bytes([12, 13])
    vfs.release(fh)
    assert vfs.drain(timeout=10)
    expected = bytearray(bytes(range(256)) * 4)
    expected[10:12] = b"XY"
    assert backend.files["/big"] == bytes(expected)


def test_truncate_without_open(backend, make_vfs):
    backend.put("/t", b"0123456789")
    vfs = make_vfs(backend)
    vfs.truncate("/t", 4)
    assert vfs.getattr("/t")["st_size"] == 4
    vfs.truncate("/t", 6)
    assert read_file(vfs, "/t") == b"0123\0\0"
    assert vfs.drain(timeout=10)
    assert backend.files["/t"] == b"0123\0\0"


def test_fsync_reports_failure_then_upload_lands(backend, make_vfs):
    # failed attempts are waited out for op_timeout (a server restart is absorbed);
    # uploads failing for longer than that fail the fsync, and land later
    vfs = make_vfs(backend, op_timeout=1)
    backend.fail_next["upload"] = 3
    fh = vfs.create("/f")
    vfs.write(fh, b"abc", 0)
    with pytest.raises(AgaveFSError) as exc:
        vfs.fsync(fh)
    assert exc.value.errno == errno.EIO
    vfs.release(fh)
    assert vfs.drain(timeout=20)
    assert backend.files == {"/f": b"abc"}


def test_lost_staging_is_uploaded_again(backend, make_vfs):
    vfs = make_vfs(backend, staging_timeout=0.5)
    backend.lose_next_staging = True
    write_file(vfs, "/f", b"payload")
    assert vfs.drain(timeout=20)
    assert backend.files == {"/f": b"payload"}
    assert backend.calls["upload"] == 2


def test_journal_finishes_uploads_after_a_crash(backend, make_vfs, tmp_path):
    backend.fail_next["upload"] = 10**6  # the server is unreachable: nothing can land
    vfs = make_vfs(backend)
    write_file(vfs, "/a", b"first")
    vfs.mkdir("/d")
    write_file(vfs, "/d/b", b"second")
    write_file(vfs, "/a", b"first, rewritten")
    # an open, never-closed file is not promised to anyone; it goes to lost+found
    fh = vfs.create("/unclosed")
    vfs.write(fh, b"partial", 0)
    vfs.close(wait=True)  # the daemon "dies": no drain
    backend.fail_next["upload"] = 0
    vfs2 = make_vfs(backend)
    assert vfs2.recover() == 2
    assert read_file(vfs2, "/a") == b"first, rewritten"  # served from the spool meanwhile
    assert vfs2.drain(timeout=20)
    assert backend.files == {"/a": b"first, rewritten", "/d/b": b"second"}
    assert list((tmp_path / "spool" / "lost+found").iterdir())


def test_the_first_record_names_the_temporary_path_the_upload_uses(backend, make_vfs):
    """The journal names a temporary upload path before anything is sent to it (a crash
    leaves it to delete), and the record written when the file is queued already does:
    the upload does not rewrite it, unless the file moved to another directory first."""
    vfs = make_vfs(backend, upload_delay=0.3)
    writes = []
    real_write = vfs.store.write_record
    vfs.store.write_record = lambda rec: (writes.append(rec), real_write(rec))[1]
    sent = []
    real_upload = backend.upload

    def upload(local_path, dir_path, name, progress=None):
        # the records as on disk (load_records is for a mount's start: it deletes the
        # temporary files of records being written, here by another upload's thread)
        on_disk = [json.loads(p.read_text()) for p in vfs.store.journal_dir.glob("*.json")]
        sent.append((f"{dir_path.rstrip('/')}/{name}", [r["leftovers"] for r in on_disk]))
        return real_upload(local_path, dir_path, name, progress)

    backend.upload = upload
    vfs.mkdir("/d")
    vfs.mkdir("/e")
    write_file(vfs, "/d/stays", b"one")
    write_file(vfs, "/d/moves", b"two")
    vfs.rename("/d/moves", "/e/moved")  # within the upload grace: nothing sent yet
    assert vfs.drain(timeout=20)
    assert backend.files == {"/d/stays": b"one", "/e/moved": b"two"}
    assert len(sent) == 2
    for temp, journal in sent:
        assert any(temp in leftovers for leftovers in journal), (temp, journal)
    stays = [r for r in writes if r["path"] == "/d/stays"]
    assert len(stays) == 1, stays  # queued once; the upload found its name recorded
    (stays_temp,) = stays[0]["leftovers"]
    assert stays_temp.startswith("/d/.agavefs~") and stays_temp in [t for t, _ in sent]
    moved_temp = next(t for t, _ in sent if t != stays_temp)
    assert moved_temp.startswith("/e/.agavefs~")  # chosen again beside the new name
    assert [r for r in writes if r["path"] == "/e/moved"][-1]["leftovers"] == [moved_temp]


def test_spool_limit(backend, make_vfs):
    vfs = make_vfs(backend, cache_max_size=1000, op_timeout=1)
    fh = vfs.create("/big")
    with pytest.raises(AgaveFSError) as exc:
        vfs.write(fh, b"x" * 2000, 0)
    assert exc.value.errno == errno.ENOSPC
    vfs.write(fh, b"x" * 500, 0)
    vfs.release(fh)
    assert vfs.drain(timeout=10)
    assert backend.files["/big"] == b"x" * 500


def test_rmdir_and_errnos(backend, make_vfs):
    backend.put("/d/f", b"1")
    vfs = make_vfs(backend)
    cases = [
        (lambda: vfs.rmdir("/d"), errno.ENOTEMPTY),
        (lambda: vfs.mkdir("/d"), errno.EEXIST),
        (lambda: vfs.unlink("/d"), errno.EISDIR),
        (lambda: vfs.rmdir("/d/f"), errno.ENOTDIR),
        (lambda: vfs.getattr("/nope"), errno.ENOENT),
        (lambda: vfs.getattr("/" + "x" * 256), errno.ENAMETOOLONG),
        (lambda: vfs.rename("/d", "/d/sub"), errno.EINVAL),
        (lambda: vfs.rename("/d/f", "/d"), errno.EISDIR),
    ]
    for call, code in cases:
        with pytest.raises(AgaveFSError) as exc:
            call()
        assert exc.value.errno == code
    vfs.unlink("/d/f")
    vfs.rmdir("/d")
    assert backend.dirs == {"/"}


def test_read_only(backend, make_vfs):
    backend.put("/f", b"1")
    vfs = make_vfs(backend, read_only=True)
    for call in (lambda: vfs.create("/g"), lambda: vfs.open("/f", os.O_WRONLY), lambda: vfs.mkdir("/x"),
                 lambda: vfs.unlink("/f"), lambda: vfs.rename("/f", "/g"), lambda: vfs.truncate("/f", 0)):
        with pytest.raises(AgaveFSError) as exc:
            call()
        assert exc.value.errno == errno.EROFS


def test_concurrent_writers_of_distinct_files(backend, make_vfs):
    vfs = make_vfs(backend, upload_workers=4)

    def work(i):
        write_file(vfs, f"/f{i}", os.urandom(1000) + str(i).encode())

    threads = [threading.Thread(target=work, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert vfs.drain(timeout=30)
    assert len(backend.files) == 40
    assert all(data.endswith(str(i).encode()) for i, data in
               ((int(p[2:]), d) for p, d in backend.files.items()))


@pytest.mark.parametrize("superseded", [False, True])
def test_a_file_that_lands_while_readdir_runs_is_listed(backend, make_vfs, superseded):
    """Found by the token soak (a file created 0.6 s before was missing from a
    listing): readdir took the cached listing, then the file's upload landed (the
    file moved from the pending nodes to the cache), then readdir merged the pending
    nodes: the file was in neither.  Here the landing happens at that point, with the
    listing in hand still the cached one, or superseded (dropped from the cache, as
    an operation of unknown outcome does)."""
    backend.put("/d/old", b"x")
    vfs = make_vfs(backend)
    vfs.readdir("/d")
    write_file(vfs, "/d/new", b"hello")
    real = vfs.meta.listing

    def listing_then_landing(path):
        got = real(path)
        if path == "/d":
            if superseded:
                vfs.meta.invalidate_listing("/d")
            assert vfs.drain(timeout=10)
            assert not vfs.nodes["/d/new"].local if "/d/new" in vfs.nodes else True
        return got

    vfs.meta.listing = listing_then_landing
    names = [n for n, _ in vfs.readdir("/d")][2:]
    vfs.meta.listing = real
    assert backend.files["/d/new"] == b"hello"
    assert sorted(names) == ["new", "old"]


def test_uploads_resume_soon_after_a_new_login(backend, make_vfs, monkeypatch):
    """Found by the token soak: a server restart cut the answer to a token refresh,
    whose refresh token the server had already rotated: the session was dead; the
    soak logged in again (as the troubleshooting section says), but the uploads had
    backed off to a minute between attempts, so the unmount waited that long.  A
    refused session is retried every SESSION_RETRY seconds instead (the client
    answers those from the credentials cache, without a request)."""
    from agavefs.vfs import writeback

    monkeypatch.setattr(writeback, "SESSION_RETRY", 0.2)
    vfs = make_vfs(backend)
    write_file(vfs, "/f", b"data")
    backend.refuse_session = True  # before the upload starts (it waits for a grace period)
    vfs.writeback.expedite(next(iter(vfs.nodes["/f"].jobs)), 0)
    deadline = time.monotonic() + 10
    while backend.calls.get("upload", 0) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert backend.calls.get("upload", 0) >= 5  # five refusals in a few seconds: no backoff
    backend.refuse_session = False  # the new login
    assert vfs.drain(timeout=1.5)
    assert backend.files["/f"] == b"data"


def test_a_lookup_waits_for_its_directory_being_listed(backend, make_vfs):
    """Lookups that come while their directory is being listed (walk-ahead, another
    process's readdir) wait for that listing instead of sending a stat each."""
    backend.put("/bench/big.bin", b"x")
    backend.put("/top.txt", b"y")
    backend.list_delay = 0.3
    vfs = make_vfs(backend)
    vfs.getattr("/")
    before = dict(backend.calls)
    lister = threading.Thread(target=vfs.readdir, args=("/",))
    lister.start()
    deadline = time.monotonic() + 5
    while not vfs._flights and time.monotonic() < deadline:  # the listing is in flight
        time.sleep(0.005)
    assert vfs.getattr("/bench")["st_nlink"] == 2
    assert vfs.getattr("/top.txt")["st_size"] == 1
    with pytest.raises(AgaveFSError) as exc:
        vfs.getattr("/missing")
    assert exc.value.errno == errno.ENOENT
    lister.join()
    assert backend.calls.get("stat", 0) == before.get("stat", 0) and backend.calls["list"] == 1


def test_a_lookup_of_a_directory_brings_its_first_entries_along(backend, make_vfs):
    """The stat of a directory asks for its first 99 entries in the same request: lookups
    of those cost nothing more; a name that is not among them still asks the server (the
    page is not the whole listing, so it proves no absence)."""
    for i in range(150):
        backend.put(f"/d/f{i:03d}", b"x" * i)
    vfs = make_vfs(backend)
    assert vfs.getattr("/d")["st_nlink"] == 2
    assert backend.calls == {"stat": 1}
    first = sorted(f"f{i:03d}" for i in range(150))[:99]
    for name in first:
        assert vfs.getattr(f"/d/{name}")["st_size"] == int(name[1:])
    assert backend.calls == {"stat": 1}
    assert vfs.getattr("/d/f149")["st_size"] == 149  # past the page: its own stat
    assert backend.calls == {"stat": 2}
    with pytest.raises(AgaveFSError) as exc:
        vfs.getattr("/d/zzz")
    assert exc.value.errno == errno.ENOENT and backend.calls == {"stat": 3}
    assert [n for n, _ in vfs.readdir("/d")][2:] == sorted(f"f{i:03d}" for i in range(150))


def test_the_lookup_of_a_small_directory_is_its_listing(backend, make_vfs):
    """A directory whose entries all came with its stat is listed by it: reading it
    costs no request, and a name missing from it is absent without one (as in a
    listing young enough to prove absence).  A directory larger than the stat's page
    is still listed when read (the test above)."""
    for i in range(5):
        backend.put(f"/d/f{i}", b"x" * i)
    backend.mkdir("/d/sub")
    backend.calls.clear()
    vfs = make_vfs(backend, negative_ttl=60)
    assert vfs.getattr("/d")["st_nlink"] == 2
    assert backend.calls == {"stat": 1}
    assert [n for n, _ in vfs.readdir("/d")][2:] == ["f0", "f1", "f2", "f3", "f4", "sub"]
    assert vfs.getattr("/d/f3")["st_size"] == 3
    with pytest.raises(AgaveFSError) as exc:
        vfs.getattr("/d/zzz")
    assert exc.value.errno == errno.ENOENT
    assert backend.calls == {"stat": 1}


@pytest.mark.parametrize("change", ["unlink", "rename", "overwrite"])
def test_entries_brought_by_a_stat_never_undo_a_change_made_meanwhile(backend, make_vfs, change):
    """The stat's answer was taken before the mount changed a child: the mount's change
    wins over the older entry that the stat brings back."""
    backend.put("/d/a", b"old")
    backend.put("/d/b", b"b")
    vfs = make_vfs(backend)
    vfs.getattr("/d/a")  # its own stat: /d is not looked up through its children yet
    vfs.meta.forget("/d")
    taken, go = threading.Event(), threading.Event()
    real = backend.stat_with_children

    def slow(path, children):
        got = real(path, children)
        if path == "/d" and not taken.is_set():  # the first: the change's own lookups pass
            taken.set()
            assert go.wait(10)
        return got

    backend.stat_with_children = slow
    looker = threading.Thread(target=vfs.getattr, args=("/d",))
    looker.start()
    assert taken.wait(10)
    if change == "unlink":
        vfs.unlink("/d/a")
    elif change == "rename":
        vfs.rename("/d/a", "/d/c")
    else:
        write_file(vfs, "/d/a", b"new content")
    go.set()
    looker.join(10)
    backend.stat_with_children = real
    if change == "overwrite":
        assert vfs.getattr("/d/a")["st_size"] == len(b"new content")
    else:
        with pytest.raises(AgaveFSError) as exc:
            vfs.getattr("/d/a")
        assert exc.value.errno == errno.ENOENT
    assert vfs.getattr("/d/b")["st_size"] == 1


def test_a_directory_read_again_unchanged_is_the_same_answer(backend, make_vfs):
    """readdir hands out the same entries list while nothing changed (the FUSE adapter
    keeps it packed for the kernel), and a new, right one after any change."""
    for i in range(30):
        backend.put(f"/d/f{i:02d}", b"x" * i)
    vfs = make_vfs(backend, dir_ttl=0.2, attr_ttl=0.2)

    def names(out):
        return sorted(n for n, _ in out)[2:]

    first = vfs.readdir("/d")
    assert vfs.readdir("/d") is first
    time.sleep(0.3)  # the listing expires: fetched again, the same entries
    assert vfs.readdir("/d") is first
    write_file(vfs, "/d/new", b"hello")  # pending upload: listed from the spool
    pending = vfs.readdir("/d")
    assert pending is not first and "new" in names(pending)
    assert dict(pending)["new"]["st_size"] == 5
    assert vfs.drain(timeout=10)
    stored = vfs.readdir("/d")
    assert "new" in names(stored) and dict(stored)["new"]["st_size"] == 5
    vfs.unlink("/d/f00")
    gone = vfs.readdir("/d")
    assert "f00" not in names(gone) and names(gone) == sorted([f"f{i:02d}" for i in range(1, 30)] + ["new"])
    backend.put("/d/f05", b"y" * 500)  # changed on the server
    time.sleep(0.3)
    changed = vfs.readdir("/d")
    assert changed is not gone and dict(changed)["f05"]["st_size"] == 500


def test_readdir_keeps_few_answers(backend, make_vfs):
    from agavefs.vfs import core
    for d in range(core.READDIR_KEPT + 4):
        backend.put(f"/d{d}/f", b"x")
    vfs = make_vfs(backend)
    outs = [vfs.readdir(f"/d{d}") for d in range(core.READDIR_KEPT + 4)]
    assert len(vfs._readdirs) == core.READDIR_KEPT
    assert vfs.readdir(f"/d{core.READDIR_KEPT + 3}") is outs[-1]
    assert vfs.readdir("/d0") is not outs[0] and vfs.readdir("/d0") == outs[0]


def _hidden(backend, directory="/"):
    prefix = directory.rstrip("/") + "/"
    return sorted(p for p in backend.files if p.startswith(prefix + ".agavefs~"))


def _tombstones(vfs):
    return [r for r in vfs.store.load_records() if str(r["id"]).startswith("aside-")]


@pytest.mark.parametrize("how", ["rename over", "unlink"])
def test_a_remote_file_replaced_or_deleted_while_open_is_read_to_its_end(backend, make_vfs, how):
    """POSIX: a file renamed over or unlinked lives on for the descriptors open on it.
    A reader that reads it from the server would find another file (or none) under the
    name: the server's copy is moved aside, the reader follows it, and its close
    deletes it (with its journal tombstone)."""
    old = bytes(range(256)) * 64
    backend.put("/a", old)
    backend.put("/b", b"new")
    vfs = make_vfs(backend)
    fh = vfs.open("/a", os.O_RDONLY)
    assert vfs.read(fh, 0, 10) == old[:10]
    if how == "unlink":
        vfs.unlink("/a")
        with pytest.raises(AgaveFSError) as exc:
            vfs.getattr("/a")
        assert exc.value.errno == errno.ENOENT
    else:
        vfs.rename("/b", "/a")
        assert read_file(vfs, "/a") == b"new"
    assert [n for n, _ in vfs.readdir("/")][2:] == (["b"] if how == "unlink" else ["a"])
    assert len(_hidden(backend)) == 1 and len(_tombstones(vfs)) == 1
    assert vfs.read(fh, 0, len(old) + 1) == old
    assert vfs.read(fh, 5000, 100) == old[5000:5100]
    vfs.release(fh)
    assert _hidden(backend) == [] and _tombstones(vfs) == []
    assert backend.files.get("/a") == (None if how == "unlink" else b"new")


def test_a_writer_of_a_remote_file_renamed_over_changes_only_its_own_copy(backend, make_vfs):
    """A descriptor opened for writing fetches the remote content at its first change:
    after a rename over its file, that is the old content (kept aside), and nothing it
    writes reaches the file that took the name."""
    backend.put("/a", b"A" * 358)
    backend.put("/d", b"D" * 100)
    vfs = make_vfs(backend)
    fh = vfs.open("/a", os.O_RDWR)
    reader = vfs.open("/a", os.O_RDONLY)
    vfs.rename("/d", "/a")
    vfs.truncate(None, 1955, fh)
    vfs.write(fh, b"xy", 356)
    expected = b"A" * 356 + b"xy" + b"\0" * (1955 - 358)
    assert vfs.read(fh, 0, 4000) == expected
    assert vfs.read(reader, 0, 4000) == expected  # the same (deleted) file
    assert read_file(vfs, "/a") == b"D" * 100
    vfs.release(reader)
    assert len(_hidden(backend)) == 1  # the writer still has it open
    vfs.release(fh)
    assert vfs.drain(timeout=10)
    assert backend.files["/a"] == b"D" * 100 and _hidden(backend) == [] and _tombstones(vfs) == []


def test_a_file_kept_aside_is_deleted_by_the_next_mount_after_a_crash(backend, make_vfs, tmp_path):
    backend.put("/a", b"old")
    backend.put("/b", b"new")
    vfs = make_vfs(backend, cache_dir=str(tmp_path / "c1"))
    fh = vfs.open("/a", os.O_RDONLY)
    vfs.rename("/b", "/a")
    assert len(_hidden(backend)) == 1
    # the daemon dies with the descriptor open: nothing deletes the aside, but its
    # tombstone is in the journal for the next mount of the same spool
    vfs.close(wait=True)
    later = make_vfs(backend, cache_dir=str(tmp_path / "c1"))
    later.recover()
    deadline = time.monotonic() + 5
    while _hidden(backend) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _hidden(backend) == [] and _tombstones(later) == [] and backend.files["/a"] == b"new"
    assert fh  # (never released: the process is gone)


def test_a_pending_file_renamed_over_an_open_remote_file(backend, make_vfs):
    """The version renamed in is still pending upload: the remote file under the name
    goes aside at once (its readers keep it), and the upload lands in a free name."""
    backend.put("/a", b"old content")
    backend.staging_delay = 0.2
    vfs = make_vfs(backend)
    fh = vfs.open("/a", os.O_RDONLY)
    write_file(vfs, "/n", b"fresh")
    vfs.rename("/n", "/a")
    assert read_file(vfs, "/a") == b"fresh"
    assert vfs.read(fh, 0, 100) == b"old content"
    assert vfs.drain(timeout=10)
    assert backend.files.get("/a") == b"fresh" and vfs.read(fh, 4, 100) == b"content"
    vfs.release(fh)
    assert _hidden(backend) == [] and _tombstones(vfs) == []


def test_a_file_kept_aside_follows_its_directory_renamed(backend, make_vfs):
    backend.put("/d/a", b"old a")
    backend.put("/d/b", b"new")
    backend.put("/d/w", b"www")
    vfs = make_vfs(backend)
    rfd = vfs.open("/d/a", os.O_RDONLY)
    wfd = vfs.open("/d/w", os.O_RDWR)
    vfs.rename("/d/b", "/d/a")
    vfs.unlink("/d/w")
    vfs.rename("/d", "/e")
    assert len(_hidden(backend, "/e")) == 2
    assert sorted(r["path"] for r in _tombstones(vfs)) == _hidden(backend, "/e")
    assert vfs.read(rfd, 0, 100) == b"old a"
    vfs.write(wfd, b"W", 0)
    assert vfs.read(wfd, 0, 100) == b"Www"
    vfs.release(rfd)
    vfs.release(wfd)
    assert _hidden(backend, "/e") == [] and _tombstones(vfs) == []
    assert backend.files == {"/e/a": b"new"}
