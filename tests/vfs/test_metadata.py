"""MetaCache: what a lookup answers after entries came from different sources."""

from __future__ import annotations

import pytest

from agavefs.vfs.backend import Entry
from agavefs.vfs.metadata import ABSENT, MetaCache


def cache() -> MetaCache:
    return MetaCache(attr_ttl=60, dir_ttl=60, negative_ttl=5, max_entries=10_000)


def test_an_entry_stored_while_its_directory_was_not_listed_does_not_come_back():
    """Found by the soak (a read saw a 4 KiB old version of a 300 KB file): an entry
    put while the parent was not listed went to the per-path attributes; the parent
    was listed again and the file changed (the listing got the new size); when the
    listing was dropped (an operation of unknown outcome forgets it), the lookup fell
    through to the old per-path entry."""
    m = cache()
    m.put("/d/f", Entry("f", False, 4096, 1.0))  # /d not listed: per-path attributes
    m.put_listing("/d", Entry("d", True, 0, 1.0), [Entry("f", False, 4096, 1.0)])
    m.put("/d/f", Entry("f", False, 300_000, 2.0))  # a new version landed
    assert m.lookup("/d/f").size == 300_000
    m.invalidate_listing("/d")
    assert m.lookup("/d/f") is None  # unknown: ask the server, never the older entry


def test_a_listing_supersedes_per_path_entries_of_its_children():
    m = cache()
    m.put("/d/f", Entry("f", False, 1, 1.0))
    m.put_listing("/d", Entry("d", True, 0, 1.0), [Entry("f", False, 2, 2.0)])
    m.invalidate_listing("/d")
    assert m.lookup("/d/f") is None  # unknown: ask the server, never the older entry


@pytest.mark.parametrize("listed", [3, 2000])  # fewer children than cached paths, and more
def test_a_listing_supersedes_exactly_its_childrens_per_path_entries(listed):
    m = cache()
    names = [f"f{i}" for i in range(listed)]
    m.put("/d/f0", Entry("f0", False, 1, 1.0))      # a child: superseded
    m.put_absent("/d/f1")                             # a child once missing: superseded
    m.put("/d/gone", Entry("gone", False, 1, 1.0))   # not in the listing: kept as it was
    m.put_absent("/d/never")
    for i in range(300):                              # other directories: kept
        m.put(f"/e/f{i}", Entry(f"f{i}", False, 7, 1.0))
        m.put_absent(f"/d/f0/x{i}")
    m.put_listing("/d", Entry("d", True, 0, 1.0), [Entry(n, False, 2, 2.0) for n in names])
    assert m.lookup("/d/f1").size == 2
    m.invalidate_listing("/d")
    assert m.lookup("/d/f0") is None and m.lookup("/d/f1") is None
    assert m.lookup("/d/gone").size == 1 and m.lookup("/d/never") is ABSENT
    assert m.lookup("/e/f299").size == 7 and m.lookup("/d/f0/x299") is ABSENT
