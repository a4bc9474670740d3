"""Walk-ahead (vfs/walkahead.py): a tree walker's next directories are listed in the
background, each directory still exactly once, and nothing is listed ahead of a
single ``ls``.  Over the in-memory backend with a 20 ms listing delay; the same
through a real mount with ``find`` in tests/mount/test_mount_browse.py."""

from __future__ import annotations

import collections
import posixpath
import threading
import time

import pytest

from agavefs.vfs import walkahead
from memory_backend import MemoryBackend


def make_tree(backend, root="/t", fanout=4, depth=3):
    dirs = [root]
    backend.dirs.add(root)
    frontier = [root]
    for _ in range(depth):
        nxt = []
        for d in frontier:
            for i in range(fanout):
                c = f"{d}/d{i}"
                backend.dirs.add(c)
                backend.files[f"{c}/f.txt"] = c.encode()
                nxt.append(c)
        dirs += nxt
        frontier = nxt
    return dirs


def walk(vfs, path):
    """What find does: readdir, then each subdirectory, depth first."""
    seen = [path]
    for name, attrs in vfs.readdir(path):
        if name in (".", "..") or attrs is None:
            continue
        if attrs["st_mode"] & 0o040000:
            seen += walk(vfs, posixpath.join(path, name))
    return seen


@pytest.fixture
def backend():
    b = MemoryBackend()
    b.list_delay = 0.02
    return b


def test_a_walk_lists_each_directory_once_and_ahead(backend, make_vfs):
    dirs = make_tree(backend)  # 85 directories
    vfs = make_vfs(backend, walk_ahead=8)
    t0 = time.monotonic()
    assert sorted(walk(vfs, "/t")) == sorted(dirs)
    took = time.monotonic() - t0
    # never twice: the walker waits for the request in flight; /t's own lookup (a stat
    # that brought all of its entries) was its listing
    assert backend.calls["list"] == len(dirs) - 1 and backend.calls["stat"] == 1
    assert vfs.walk.prefetched > len(dirs) // 2
    # one listing after another would take 85 x 20 ms; ahead, 8 at a time
    assert took < len(dirs) * 0.02 * 0.6, took


def test_without_walk_ahead(backend, make_vfs):
    dirs = make_tree(backend, fanout=2, depth=2)
    vfs = make_vfs(backend, walk_ahead=0)
    assert sorted(walk(vfs, "/t")) == sorted(dirs)
    assert backend.calls["list"] == len(dirs) - 1 and backend.calls["stat"] == 1 and vfs.walk is None


def test_a_single_ls_lists_nothing_ahead(backend, make_vfs):
    make_tree(backend)
    vfs = make_vfs(backend, walk_ahead=8)
    vfs.readdir("/t")
    vfs.readdir("/t/d1/d2")  # not a child of a directory just read: no walk
    time.sleep(0.2)
    # no listing at all: each directory's lookup on the way was a stat that brought all
    # of its entries (its listing), and nothing was listed ahead
    assert backend.calls.get("list", 0) == 0 and backend.calls["stat"] == 2
    assert vfs.walk.prefetched == 0


def test_a_walk_that_stops_lists_one_level_ahead_at_most(backend, make_vfs):
    make_tree(backend)
    vfs = make_vfs(backend, walk_ahead=8)
    vfs.readdir("/t")
    vfs.readdir("/t/d0")  # a walk: /t/d0's subdirectories and its siblings are listed ahead
    time.sleep(0.3)
    assert vfs.walk.prefetched == 4 + 3  # d0/d0..d3, then d1..d3; nothing deeper
    listed = backend.calls["list"]
    time.sleep(0.3)
    assert backend.calls["list"] == listed


def test_concurrent_readdirs_of_one_directory_share_the_request(backend, make_vfs):
    make_tree(backend, fanout=2, depth=1)
    for i in range(100):  # more than its lookup's stat brings: a readdir lists it
        backend.files[f"/t/x{i:03d}"] = b""
    vfs = make_vfs(backend, walk_ahead=0)
    vfs.getattr("/t")  # the directory's own entry
    before = backend.calls.get("list", 0)
    results = []
    threads = [threading.Thread(target=lambda: results.append(vfs.readdir("/t"))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6 and all(r == results[0] for r in results)
    assert backend.calls["list"] == before + 1


def _count_looks(vfs, monkeypatch) -> collections.Counter:
    """How many times walk-ahead looks for the unlisted subdirectories of each directory."""
    looks: collections.Counter = collections.Counter()
    real = vfs._unlisted_subdirs

    def counting(path, listing=None):
        looks[path] += 1
        return real(path, listing)

    monkeypatch.setattr(vfs, "_unlisted_subdirs", counting)
    return looks


def test_a_warm_walk_looks_at_each_directory_once(backend, make_vfs, monkeypatch):
    monkeypatch.setattr(walkahead, "SETTLED_FOR", 0.3)
    dirs = make_tree(backend)
    vfs = make_vfs(backend, walk_ahead=8)
    walk(vfs, "/t")  # cold: every directory listed
    time.sleep(0.4)  # nothing settled any more
    looks = _count_looks(vfs, monkeypatch)
    listed = backend.calls["list"]
    assert sorted(walk(vfs, "/t")) == sorted(dirs)
    assert backend.calls["list"] == listed
    # each directory once: not again for each of its subdirectories (a parent of 4
    # leaves was looked at 4 times, its siblings' subdirectories each time)
    assert set(dirs) <= set(looks) and max(looks.values()) == 1, looks.most_common(3)


def test_a_directory_is_looked_at_again_once_settled_long_enough(backend, make_vfs, monkeypatch):
    monkeypatch.setattr(walkahead, "SETTLED_FOR", 0.3)
    make_tree(backend)
    vfs = make_vfs(backend, walk_ahead=8)
    walk(vfs, "/t")
    vfs.readdir("/t/d1/d0")  # a walk in /t/d1 finds all of its subdirectories listed
    vfs.meta.invalidate_listing("/t/d1/d2")
    vfs.readdir("/t/d1")  # settled moments ago: not looked at, nothing listed ahead
    time.sleep(0.2)
    listed = backend.calls["list"]
    assert not vfs.meta.has_listing("/t/d1/d2")
    time.sleep(0.2)
    vfs.readdir("/t/d1")  # settled 0.4 s ago: looked at, its unlisted subdirectory listed ahead
    for _ in range(100):
        if vfs.meta.has_listing("/t/d1/d2"):
            break
        time.sleep(0.01)
    assert vfs.meta.has_listing("/t/d1/d2") and backend.calls["list"] == listed + 1


def test_a_directory_whose_listing_is_unknown_is_not_settled():
    looks: collections.Counter = collections.Counter()

    def unlisted(d):
        looks[d] += 1
        return None if d == "/t" else []  # /t's listing is not cached

    w = walkahead.WalkAhead(lambda path: False, 1)
    try:
        w.entered("/t", unlisted)  # the walk starts: nothing looked at
        w.entered("/t/a", unlisted)  # looks at /t/a (settled: no subdirectory) and /t
        w.entered("/t/b", unlisted)  # /t again (its subdirectories are still unknown)
        w.entered("/t/a", unlisted)  # /t/a settled moments ago: only /t
    finally:
        w.stop()
    assert looks == {"/t/a": 1, "/t/b": 1, "/t": 3}
