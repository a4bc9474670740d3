"""Sibling prefetch (agavefs/vfs/siblings.py): a reader of one small file after the
other gets the next ones fetched ahead, each once; anyone else gets nothing extra,
and a copy fetched ahead never hides a change made through the mount."""

from __future__ import annotations

import os
import time

from memory_backend import MemoryBackend


def read_whole(vfs, path) -> bytes:
    fh = vfs.open(path, os.O_RDONLY)
    try:
        size = vfs.getattr(path)["st_size"]
        out, offset = b"", 0
        while True:  # like cat: until a read returns nothing
            chunk = vfs.read(fh, offset, 4096)
            if not chunk:
                return out
            out += chunk
            offset += len(chunk)
            assert offset <= size
    finally:
        vfs.release(fh)


def settle(vfs, timeout=5.0):
    """Wait until nothing is queued or in flight."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with vfs.siblings._lock:
            if not vfs.siblings._queued:
                return
        time.sleep(0.01)
    raise AssertionError("prefetch did not settle")


def tree(backend, names, size=100):
    content = {}
    for i, name in enumerate(names):
        content[name] = bytes([i % 251]) * size + name.encode()
        backend.put(f"/d/{name}", content[name])
    return content


def test_a_reader_of_sibling_files_gets_the_next_ones_fetched_ahead_once(make_vfs):
    backend = MemoryBackend()
    names = [f"f{i:02d}" for i in range(40)]
    content = tree(backend, names)
    vfs = make_vfs(backend, prefetch_files=8)
    vfs.readdir("/d")  # a glob or a walker lists the folder first
    for name in names:
        assert read_whole(vfs, f"/d/{name}") == content[name]
        settle(vfs)  # (a slow reader: every file it opens next is there)
    # every file fetched exactly once; all but the first two opened from memory
    assert sorted(backend.read_paths) == [f"/d/{n}" for n in names]
    assert vfs.siblings.used == len(names) - 2
    assert vfs.status()["ahead"]["files_used"] == len(names) - 2


def test_a_shell_glob_order_is_followed_too(make_vfs):
    """The listing's order (here case-insensitive) is what readdir gives (tar, cp -r);
    a glob sorts by byte value: both are recognised."""
    backend = MemoryBackend()
    names = ["a1", "B2", "c3", "D4", "e5", "F6", "g7", "H8"]
    content = tree(backend, names)
    vfs = make_vfs(backend, prefetch_files=8)
    vfs.readdir("/d")
    glob_order = sorted(names)  # B2 D4 F6 H8 a1 c3 e5 g7
    for name in glob_order:
        assert read_whole(vfs, f"/d/{name}") == content[name]
        settle(vfs)
    assert sorted(backend.read_paths) == sorted(f"/d/{n}" for n in names)
    assert vfs.siblings.used == len(names) - 2


def test_random_or_partial_readers_start_nothing(make_vfs):
    backend = MemoryBackend()
    names = [f"f{i:02d}" for i in range(20)]
    content = tree(backend, names)
    vfs = make_vfs(backend, prefetch_files=8)
    vfs.readdir("/d")
    for name in ["f05", "f00", "f11", "f03", "f19"]:  # whole files, but not in a row
        assert read_whole(vfs, f"/d/{name}") == content[name]
    for name in names[:6]:  # in a row, but only their first bytes (a thumbnailer, `file`)
        fh = vfs.open(f"/d/{name}", os.O_RDONLY)
        assert vfs.read(fh, 0, 10) == content[name][:10]
        vfs.release(fh)
    settle(vfs)
    assert len(backend.read_paths) == 5 + 6  # exactly what was read, nothing ahead
    assert vfs.siblings.fetched == 0


def test_large_and_empty_files_are_not_fetched_ahead(make_vfs):
    from agavefs.vfs.siblings import SMALL_MAX

    backend = MemoryBackend()
    backend.put("/d/a", b"a" * 10)
    backend.put("/d/b", b"b" * 10)
    backend.put("/d/c", b"c" * (SMALL_MAX + 1))
    backend.put("/d/d", b"")
    backend.put("/d/e", b"e" * 10)
    vfs = make_vfs(backend, prefetch_files=8)
    vfs.readdir("/d")
    read_whole(vfs, "/d/a")
    read_whole(vfs, "/d/b")
    settle(vfs)
    assert backend.read_paths == ["/d/a", "/d/b", "/d/e"]


def test_a_file_changed_through_the_mount_is_never_read_from_a_copy_fetched_ahead(make_vfs):
    backend = MemoryBackend(staging_delay=0.05)
    names = [f"f{i}" for i in range(8)]
    content = tree(backend, names)
    vfs = make_vfs(backend, prefetch_files=8)
    vfs.readdir("/d")
    read_whole(vfs, "/d/f0")
    read_whole(vfs, "/d/f1")
    settle(vfs)
    assert vfs.siblings.fetched == 6  # f2..f7 are here
    # f2 rewritten through the mount with the same size; f3 replaced by a rename of
    # another file of the same size; f4 deleted and created again
    same = b"X" * len(content["f2"])
    fh = vfs.open("/d/f2", os.O_WRONLY | os.O_TRUNC)
    vfs.write(fh, same, 0)
    vfs.release(fh)
    backend.put("/other", b"Y" * len(content["f3"]))
    backend.mtimes["/other"] = backend.mtimes["/d/f3"]  # even the same mtime (one-second clocks)
    vfs.rename("/other", "/d/f3")
    vfs.unlink("/d/f4")
    fh = vfs.create("/d/f4")
    vfs.write(fh, b"Z" * len(content["f4"]), 0)
    vfs.release(fh)
    assert vfs.drain(timeout=10)
    assert read_whole(vfs, "/d/f2") == same
    assert read_whole(vfs, "/d/f3") == b"Y" * len(content["f3"])
    assert read_whole(vfs, "/d/f4") == b"Z" * len(content["f4"])
    assert read_whole(vfs, "/d/f5") == content["f5"]  # untouched: from the copy


def test_prefetch_off(make_vfs):
    backend = MemoryBackend()
    names = [f"f{i}" for i in range(6)]
    tree(backend, names)
    vfs = make_vfs(backend, prefetch_files=0)
    vfs.readdir("/d")
    for name in names:
        read_whole(vfs, f"/d/{name}")
    assert vfs.siblings is None and len(backend.read_paths) == 6
