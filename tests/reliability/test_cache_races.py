"""Races between the server and the mount's caches, found by scripts/soak.py and
pinned down here over the in-memory backend of tests/vfs (milliseconds, no FUSE):

* a listing that was in flight while a change was made through the mount (an upload
  renamed into place, a delete, a directory renamed) must not hide the change, in
  the answer or in the cache (the soak saw a closed file missing from ``ls`` for a
  whole --dir-ttl, then reappear);
* renaming a directory while a cancelled upload still has its temporary file in it
  must not leave that file behind on the server (the soak found ``.agavefs~`` files
  under renamed directories after umount).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "vfs"))

from memory_backend import MemoryBackend  # noqa: E402

from agavefs.errors import NotFound  # noqa: E402
from agavefs.vfs.writeback import is_temp_name  # noqa: E402


class GatedBackend(MemoryBackend):
    """``list`` of a chosen directory takes its snapshot, then waits for ``gate``;
    the first ``staging_state`` call waits for ``staging_gate``."""

    def __init__(self):
        super().__init__(staging_delay=0.0)
        self.gated_dir: str | None = None
        self.gate = threading.Event()
        self.listing_taken = threading.Event()
        self.staging_gate: threading.Event | None = None
        self.staging_waiting = threading.Event()
        self.gate_stats = False

    def list(self, path):
        result = super().list(path)
        if path == self.gated_dir:
            self.gated_dir = None
            self.listing_taken.set()
            assert self.gate.wait(10)
        return result

    def stat_with_children(self, path, children):
        """As for a large directory (its entries are not all brought along): a readdir
        lists it with ``list`` (gated above).  With ``gate_stats``, a stat that does bring
        all of them (the directory's listing) is gated like ``list``."""
        me, kids, whole = super().stat_with_children(path, children)
        if not self.gate_stats:
            return me, kids, False
        if path == self.gated_dir and whole:
            self.gated_dir = None
            self.listing_taken.set()
            assert self.gate.wait(10)
        return me, kids, whole

    def staging_state(self, path, size):
        gate = self.staging_gate
        if gate is not None:
            self.staging_gate = None
            self.staging_waiting.set()
            assert gate.wait(10)
        return super().staging_state(path, size)




def write(vfs, path, data):
    fh = vfs.create(path)
    vfs.write(fh, data, 0)
    vfs.release(fh)


def names(vfs, path):
    return sorted(n for n, _ in vfs.readdir(path) if n not in (".", ".."))


def _listing_in_flight(vfs, backend, path):
    backend.gated_dir = path
    backend.gate.clear()
    backend.listing_taken.clear()
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("names", names(vfs, path)))
    t.start()
    assert backend.listing_taken.wait(10)
    return t, out


def test_upload_landing_during_a_listing_is_not_hidden(make_vfs):
    backend = GatedBackend()
    backend.put("/d/old.txt", b"old")
    vfs = make_vfs(backend, dir_ttl=60, negative_ttl=5)
    t, out = _listing_in_flight(vfs, backend, "/d")  # the server's answer has no new.txt
    write(vfs, "/d/new.txt", b"closed before the listing came back")
    assert vfs.drain(timeout=10)  # stored, the node forgotten: only the caches know it now
    backend.gate.set()
    t.join(10)
    assert out["names"] == ["new.txt", "old.txt"]
    assert names(vfs, "/d") == ["new.txt", "old.txt"]  # the cached listing too
    assert vfs.getattr("/d/new.txt")["st_size"] == len(b"closed before the listing came back")


@pytest.mark.parametrize("change", ["upload", "delete"])
def test_a_change_during_a_lookup_that_lists_a_small_directory_is_kept(make_vfs, change):
    """The lookup of a small directory is its listing (its stat brings all its entries):
    a change made through the mount while that stat is in flight wins over its answer,
    as over a listing's."""
    backend = GatedBackend()
    backend.gate_stats = True
    backend.put("/d/old.txt", b"old")
    vfs = make_vfs(backend, dir_ttl=60, negative_ttl=5)
    t, out = _listing_in_flight(vfs, backend, "/d")
    if change == "upload":
        write(vfs, "/d/new.txt", b"closed before the stat came back")
        assert vfs.drain(timeout=10)
    else:
        vfs.unlink("/d/old.txt")
    backend.gate.set()
    t.join(10)
    expected = ["new.txt", "old.txt"] if change == "upload" else []
    assert out["names"] == expected
    assert names(vfs, "/d") == expected  # the cached listing too
    assert backend.calls.get("list", 0) == 0


def test_delete_during_a_listing_is_not_undone(make_vfs):
    backend = GatedBackend()
    backend.put("/d/a.txt", b"a")
    backend.put("/d/b.txt", b"b")
    vfs = make_vfs(backend)
    vfs.getattr("/d/a.txt")
    t, out = _listing_in_flight(vfs, backend, "/d")  # the server's answer still has a.txt
    vfs.unlink("/d/a.txt")
    backend.gate.set()
    t.join(10)
    assert out["names"] == ["b.txt"]
    assert names(vfs, "/d") == ["b.txt"]
    with pytest.raises(NotFound):
        vfs.getattr("/d/a.txt")


def test_directory_renamed_during_its_listing_is_not_cached_under_the_old_name(make_vfs):
    backend = GatedBackend()
    backend.put("/d/x.txt", b"x")
    vfs = make_vfs(backend)
    vfs.getattr("/d")
    t, out = _listing_in_flight(vfs, backend, "/d")
    vfs.rename("/d", "/e")
    backend.gate.set()
    t.join(10)
    with pytest.raises(NotFound):
        vfs.getattr("/d")
    assert names(vfs, "/") == ["e"]
    assert names(vfs, "/e") == ["x.txt"]


def test_directory_rename_waits_for_a_cancelled_upload_to_clean_up(make_vfs):
    backend = GatedBackend()
    backend.put("/d/keep.txt", b"k")
    vfs = make_vfs(backend, op_timeout=10)
    gate = threading.Event()
    backend.staging_gate = gate
    write(vfs, "/d/f.txt", b"version 1")  # its temporary file lands in /d; its poll waits
    assert backend.staging_waiting.wait(10)
    write(vfs, "/d/f.txt", b"version 2")  # cancels version 1, whose temporary file is in /d
    done = threading.Event()
    t = threading.Thread(target=lambda: (vfs.rename("/d", "/e"), done.set()))
    t.start()
    t.join(0.5)
    gate.set()  # the cancelled upload sees its file stored and deletes it; the rename goes on
    t.join(15)
    assert done.is_set()
    assert vfs.drain(timeout=15)
    with backend.lock:
        left = [p for p in list(backend.files) + list(backend.staging) if is_temp_name(os.path.basename(p))]
        files = dict(backend.files)
    assert not left, files
    assert files == {"/e/keep.txt": b"k", "/e/f.txt": b"version 2"}


def test_open_while_the_last_upload_lands_keeps_the_content(make_vfs):
    """open() found the file's node (its upload pending), then the upload landed and
    the node was forgotten before open() took it: the new node must start from the
    stored content, not from an empty file (the soak saw a truncate produce zeros)."""
    backend = GatedBackend()
    vfs = make_vfs(backend)
    gate = threading.Event()
    backend.staging_gate = gate
    content = bytes(range(256)) * 256  # 64 KiB
    write(vfs, "/f", content)
    assert backend.staging_waiting.wait(10)
    real_local_node = vfs._local_node

    def local_node_then_upload_lands(path):
        node = real_local_node(path)
        if node is not None and path == "/f" and not gate.is_set():
            gate.set()  # the upload lands and the node is forgotten right now
            assert vfs.drain(timeout=10)
        return node

    vfs._local_node = local_node_then_upload_lands
    vfs.truncate("/f", 1000)  # opens /f for writing without O_TRUNC
    vfs._local_node = real_local_node
    fh = vfs.open("/f", os.O_RDONLY)
    try:
        assert vfs.read(fh, 0, 5000) == content[:1000]
    finally:
        vfs.release(fh)
    assert vfs.drain(timeout=10)
    assert backend.files["/f"] == content[:1000]


def test_file_stays_visible_while_a_reopen_copies_its_pending_version(make_vfs):
    """Reopening a file whose closed version is pending copies that version (so the
    journal keeps it until the next close); while the copy runs the file must not
    vanish or show another size."""
    backend = GatedBackend()
    vfs = make_vfs(backend)
    gate = threading.Event()
    backend.staging_gate = gate  # the closed version stays pending
    write(vfs, "/f", b"x" * 5000)
    assert backend.staging_waiting.wait(10)
    copying, go_on = threading.Event(), threading.Event()
    real_new_file = vfs.store.new_file

    def new_file():
        spool = real_new_file()
        real_copy = spool.copy_from

        def slow_copy(source, timeout):
            copying.set()
            assert go_on.wait(10)
            return real_copy(source, timeout)

        spool.copy_from = slow_copy
        return spool

    vfs.store.new_file = new_file
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("fh", vfs.open("/f", os.O_WRONLY)))
    t.start()
    try:
        assert copying.wait(10)
        assert vfs.getattr("/f")["st_size"] == 5000  # not ENOENT, not the server's idea
        assert [n for n, _ in vfs.readdir("/") if n == "f"] == ["f"]
    finally:
        go_on.set()
        t.join(10)
        vfs.store.new_file = real_new_file
    vfs.write(out["fh"], b"y", 5000)
    vfs.release(out["fh"])
    gate.set()
    assert vfs.drain(timeout=10)
    assert backend.files["/f"] == b"x" * 5000 + b"y"


def test_a_job_cancelled_as_its_upload_starts_leaves_nothing_behind(make_vfs, monkeypatch):
    """A newer version cancels the older one just as the older one's upload step
    begins: either the upload is not sent, or it is sent and then deleted (the soak
    found the older version's temporary file left on the server)."""
    backend = GatedBackend()
    vfs = make_vfs(backend)
    real_claim = vfs.writeback._claim_target
    fired = threading.Event()

    def claim_racing_a_cancel(job, state):
        # the upload step has passed its check of ``cancelled`` and named its temporary
        # file (recorded in the journal): the cancel lands before anything is sent
        claimed = real_claim(job, state)
        if not fired.is_set():
            fired.set()
            threading.Thread(target=vfs.writeback.cancel, args=(job,), daemon=True).start()
            deadline = time.monotonic() + 5
            while not job.cancelled and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(0.05)
        return claimed

    monkeypatch.setattr(vfs.writeback, "_claim_target", claim_racing_a_cancel)
    vfs.mkdir("/d")
    write(vfs, "/d/f", b"old version")
    assert fired.wait(10)
    write(vfs, "/d/f", b"new version")
    assert vfs.drain(timeout=15)
    time.sleep(0.2)
    with backend.lock:
        backend._land()
        left = [p for p in list(backend.files) + list(backend.staging) if is_temp_name(os.path.basename(p))]
        files = dict(backend.files)
    assert not left, files
    assert files == {"/d/f": b"new version"}


def test_closing_a_new_version_as_the_previous_one_lands_keeps_it_visible(make_vfs):
    """The last close seals the new version; if the previous version's upload finishes
    just before the new job is on the node's list, the node must not be forgotten (the
    soak saw a truncate "undone" for readers - they were served the previous version
    from the server - and renamed files come back under their old name)."""
    backend = GatedBackend()
    vfs = make_vfs(backend)
    gate = threading.Event()
    backend.staging_gate = gate
    write(vfs, "/f", b"version 1 " * 100)
    assert backend.staging_waiting.wait(10)
    with vfs.writeback._cond:
        first = next(iter(vfs.writeback.jobs.values()))
    real_queue = vfs._queue

    def queue_after_the_previous_upload_lands(node, spool, mtime, *args, **kw):
        if not gate.is_set():
            gate.set()
            assert first.finished.wait(10)  # its job_done ran: nothing pending on the node now
        return real_queue(node, spool, mtime, *args, **kw)

    vfs._queue = queue_after_the_previous_upload_lands
    fh = vfs.open("/f", os.O_WRONLY)
    vfs.truncate("/f", 7, fh)
    vfs.release(fh)  # the last close: seal, then queue
    vfs._queue = real_queue
    assert vfs.getattr("/f")["st_size"] == 7
    fh = vfs.open("/f", os.O_RDONLY)
    try:
        assert vfs.read(fh, 0, 100) == b"version"
    finally:
        vfs.release(fh)
    vfs.rename("/f", "/g")  # the pending version follows the rename, nothing stays behind
    assert vfs.drain(timeout=10)
    with backend.lock:
        files = dict(backend.files)
    assert files == {"/g": b"version"}, files
