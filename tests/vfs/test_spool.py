"""The spool and the page cache: writeback started while a file grows, pages dropped
once their bytes are on their way to the server, and spool removals that outlive
their upload job (spool.py, streaming.py, writeback.py)."""

import ctypes
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from agavefs.vfs import spool as spool_mod
from agavefs.vfs.spool import WRITEBACK_EVERY, SpoolFile, SpoolStore
from agavefs.vfs.streaming import DROP_EVERY, StreamSource
from memory_backend import MemoryBackend

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[2]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


def cached_pages(path: str) -> list[bool]:
    """For each page of the file: is it in the page cache (mincore of a mapping)?"""
    size = os.path.getsize(path)
    page = os.sysconf("SC_PAGE_SIZE")
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            vec = (ctypes.c_ubyte * ((size + page - 1) // page))()
            assert _libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
            return [bool(b & 1) for b in vec]
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def _on_tmpfs(path: Path) -> bool:
    best, fstype = "", ""
    with open("/proc/mounts") as f:
        for line in f:
            mnt, kind = line.split()[1], line.split()[2]
            if str(path).startswith(mnt.rstrip("/") + "/") and len(mnt) > len(best):
                best, fstype = mnt, kind
    return fstype in ("tmpfs", "ramfs")


@pytest.fixture
def disk_dir(tmp_path):
    """A directory on a disk-backed file system (a tmpfs page is its storage: it can
    never be dropped), as a mount's cache directory is."""
    if not _on_tmpfs(tmp_path):
        yield tmp_path
        return
    d = tempfile.mkdtemp(prefix=".spooltest-", dir=REPO)
    try:
        yield Path(d)
    finally:
        import shutil
        shutil.rmtree(d, ignore_errors=True)


def test_writeback_starts_every_few_mib_while_the_file_grows(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(spool_mod, "start_writeback", lambda fd: started.append(fd) or True)
    f = SpoolStore(str(tmp_path / "a"), 1 << 30).new_file()
    for i in range(20):
        f.pwrite(b"x" * MiB, i * MiB, 5)
    assert len(started) == 20 * MiB // WRITEBACK_EVERY == 2
    assert set(started) == {f._fd}
    # random writes count too (the bytes written, wherever they went)
    for i in range(8):
        f.pwrite(b"y" * MiB, (7 - i) * MiB, 5)
    assert len(started) == 3
    # without fsync at close (fsync_spool off) nothing waits for the disk: nothing to start
    quiet = SpoolStore(str(tmp_path / "b"), 1 << 30, fsync=False).new_file()
    for i in range(20):
        quiet.pwrite(b"x" * MiB, i * MiB, 5)
    assert len(started) == 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_start_writeback_is_a_real_call(disk_dir):
    f = SpoolStore(str(disk_dir / "s"), 1 << 30).new_file()
    f.pwrite(os.urandom(MiB), 0, 5)
    assert spool_mod.start_writeback(f._fd) is True
    f.fsync()
    f.decref()


def test_drop_cache_lets_clean_pages_go(disk_dir):
    store = SpoolStore(str(disk_dir / "s"), 1 << 30)
    f = store.new_file()
    data = os.urandom(4 * MiB)
    f.pwrite(data, 0, 5)
    f.fsync()
    pages = cached_pages(f.path)
    assert all(pages)  # just written: every page cached
    f.drop_cache(2 * MiB)
    pages = cached_pages(f.path)
    half = len(pages) // 2
    assert not any(pages[:half]) and all(pages[half:])
    f.drop_cache()
    assert not any(cached_pages(f.path))
    assert f.pread(len(data), 0) == data  # from the disk now
    f.decref()


class _RecordingSpool:
    def __init__(self):
        self.drops = []

    def pread(self, n, offset):
        return b"\0" * n

    def drop_cache(self, end=0):
        self.drops.append(end)


def test_a_streamed_upload_drops_the_pages_it_has_sent():
    spool = _RecordingSpool()
    source = StreamSource(spool, 0, idle=5)
    source.grow(20 * MiB)
    source.seal(20 * MiB)
    sent = 0
    for chunk in source.chunks():
        # a chunk's pages go only once the next chunk is asked for (it has been sent)
        assert all(end <= sent for end in spool.drops)
        sent += len(chunk)
    assert sent == 20 * MiB
    assert spool.drops == [DROP_EVERY, 2 * DROP_EVERY]


def test_an_uploaded_spool_file_leaves_the_page_cache(make_vfs, disk_dir):
    backend = MemoryBackend(staging_delay=30)  # the upload waits in staging: its spool stays
    vfs = make_vfs(backend, cache_dir=str(disk_dir / "cache"))
    data = os.urandom(3 * MiB)
    fh = vfs.create("/f.bin")
    vfs.write(fh, data, 0)
    vfs.release(fh)
    deadline = time.monotonic() + 10
    while not backend.staging:
        assert time.monotonic() < deadline, "the upload did not reach the server"
        time.sleep(0.01)
    [job] = vfs.writeback.pending()
    while job.state != "staging":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not any(cached_pages(job.spool.path))  # on disk, sent: no second copy in memory
    assert vfs.read(vfs.open("/f.bin", os.O_RDONLY), 0, len(data)) == data  # still readable
    with backend.lock:  # the staging ends now
        backend.staging_delay = 0
        for path, (due, body, lose) in list(backend.staging.items()):
            backend.staging[path] = (0, body, lose)
    assert vfs.drain(timeout=10)
    assert backend.files["/f.bin"] == data


def test_a_job_is_done_for_its_waiters_before_its_spool_file_is_removed(make_vfs, monkeypatch):
    """An unlink of a large file takes ~0.1 s: an unmount's drain does not wait for it,
    the store counts it, and VFS.drain (settle) and VFS.close wait for it."""
    gate = threading.Event()
    discarded = []
    real_discard = SpoolFile._discard

    def slow_discard(self):
        gate.wait(10)
        real_discard(self)
        discarded.append(self.id)

    monkeypatch.setattr(SpoolFile, "_discard", slow_discard)
    backend = MemoryBackend()
    vfs = make_vfs(backend)
    fh = vfs.create("/f")
    vfs.write(fh, b"data", 0)
    vfs.release(fh)
    assert vfs.drain(timeout=10, settle=False)  # stored: the unmount may go on
    assert backend.files["/f"] == b"data"
    deadline = time.monotonic() + 10
    while vfs.store.busy != 1:  # the removal is announced, and held up
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not discarded and list(vfs.store.data_dir.iterdir())
    assert vfs.store.settle(timeout=0.2) is False
    waiter = threading.Thread(target=lambda: vfs.drain(timeout=10))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()  # drain with settle waits for the removal
    gate.set()
    waiter.join(10)
    assert not waiter.is_alive()
    assert discarded and not list(vfs.store.data_dir.iterdir())
    assert vfs.store.busy == 0 and vfs.status()["spool_bytes"] == 0


def test_close_settles_the_store(tmp_path):
    store = SpoolStore(str(tmp_path / "s"), 1 << 20)
    store.hold()
    released = threading.Timer(0.1, store.release)
    released.start()
    assert store.settle(timeout=10) is True
    assert store.busy == 0
    store.hold()
    assert store.settle(timeout=0.05) is False
    store.release()
