"""MetaCache: what a lookup answers after entries came from different sources."""

from __future__ import annotations

from agavefs.vfs.backend import Entry
from agavefs.vfs.metadata import MetaCache


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
