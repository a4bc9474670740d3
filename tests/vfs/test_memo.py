"""SizedLRU: the bounded memo behind readdir's kept answers (VFS and FUSE adapter)."""

from hypothesis import given, settings, strategies as hst

from agavefs.vfs.memo import SizedLRU


def test_bounded_by_count_and_by_size_oldest_first():
    m = SizedLRU(3, 10)
    for k in "abc":
        m.put(k, [0] * 2)
    assert m.get("a") == [0, 0]  # "a" is now the most recent
    m.put("d", [0] * 2)  # 4 items: "b" (least recent) goes
    assert m.get("b") is None and [m.get(k) is not None for k in "acd"] == [True] * 3
    m.put("e", [0] * 6)  # 12 > 10: the oldest go until it fits
    assert len(m) <= 3 and m.total <= 10 and m.get("e") is not None
    assert m.total == sum(len(v) for v in m.values())


def test_a_value_too_large_is_not_kept_unless_it_is_the_newest_in_use():
    m = SizedLRU(4, 10)
    m.put("small", [0])
    m.put("huge", [0] * 11)
    assert m.get("huge") is None and m.get("small") == [0] and m.total == 1
    keep = SizedLRU(4, 10, keep_newest=True)
    keep.put("small", [0])
    keep.put("huge", [0] * 11)
    assert keep.get("huge") is not None and len(keep) == 1 and keep.total == 11


def test_putting_a_key_again_replaces_it():
    m = SizedLRU(2, 10, size=lambda v: v)
    m.put("a", 4)
    m.put("a", 6)
    assert m.get("a") == 6 and m.total == 6 and len(m) == 1


@settings(max_examples=200, deadline=None)
@given(hst.lists(hst.tuples(hst.sampled_from("abcdefg"), hst.integers(0, 12), hst.booleans()), max_size=60),
       hst.booleans())
def test_against_a_model(ops, keep_newest):
    m = SizedLRU(3, 20, size=lambda v: v, keep_newest=keep_newest)
    model: list[tuple[str, int]] = []  # least recent first
    for key, size, is_get in ops:
        if is_get:
            hit = [v for k, v in model if k == key]
            assert m.get(key) == (hit[0] if hit else None)
            if hit:
                model = [(k, v) for k, v in model if k != key] + [(key, hit[0])]
            continue
        m.put(key, size)
        model = [(k, v) for k, v in model if k != key]
        if size > 20 and not keep_newest:
            pass
        else:
            model.append((key, size))
            floor = 1 if keep_newest else 0
            while len(model) > floor and (len(model) > 3 or sum(v for _, v in model) > 20):
                model.pop(0)
        assert list(m.values()) == [v for _, v in model]
        assert m.total == sum(v for _, v in model)
