"""The FUSE adapter's own plumbing (fuse_ops.py): the stat it hands the kernel for
each readdir entry, packed in one call instead of mfusepy's field-by-field
``set_st_attrs``, must be byte for byte what ``set_st_attrs`` would have written."""

from __future__ import annotations

import ctypes
import os
import stat as st

from hypothesis import given, settings, strategies as hst

from agavefs.fuse_ops import _STAT_PACKER, _fill_stat, _to_ns, fuse

U32 = hst.integers(0, 2**32 - 1)
TIMES = hst.floats(0, 2**33, allow_nan=False, allow_infinity=False)
ATTRS = hst.fixed_dictionaries({
    "st_mode": hst.sampled_from([st.S_IFREG | 0o644, st.S_IFDIR | 0o755, st.S_IFREG | 0o444, st.S_IFREG]),
    "st_nlink": hst.integers(1, 2**16),
    "st_size": hst.integers(0, 2**62),
    "st_uid": U32,
    "st_gid": U32,
    "st_mtime": TIMES,
    "st_ctime": TIMES,
    "st_atime": TIMES,
    "st_blocks": hst.integers(0, 2**53),
    "st_blksize": hst.sampled_from([4096, 128 * 1024]),
})


def _by_mfusepy(attrs: dict) -> bytes:
    stat = fuse.c_stat()
    fuse.set_st_attrs(stat, _to_ns(attrs), use_ns=True)
    return bytes(stat)


def _packed(attrs: dict) -> bytes:
    stat = fuse.c_stat()
    ctypes.memset(ctypes.byref(stat), 0xFF, ctypes.sizeof(stat))  # what a reused struct may hold
    _fill_stat(stat, attrs)
    return bytes(stat)


def test_the_packer_knows_this_platforms_layout():
    assert _STAT_PACKER is not None


@settings(max_examples=400, deadline=None)
@given(ATTRS)
def test_a_packed_stat_is_what_set_st_attrs_writes(attrs):
    assert _packed(attrs) == _by_mfusepy(attrs)


@settings(max_examples=100, deadline=None)
@given(ATTRS, hst.sampled_from(["st_blocks", "st_atime", "st_nlink"]))
def test_attributes_of_another_shape_take_the_field_by_field_way(attrs, missing):
    del attrs[missing]
    assert _packed(attrs) == _by_mfusepy(attrs)
    attrs["st_extra"] = 1
    assert _packed(attrs) == _by_mfusepy(attrs)


def test_ls_l_shows_the_servers_sizes_times_and_modes(emu, mount_factory):
    d = emu.home() / "dated"
    d.mkdir()
    want = {}
    for i in range(40):
        p = d / f"f{i:02d}"
        p.write_bytes(b"x" * (i * 1000 + i))
        ns = 1_600_000_000_123_000_000 + i * 86_400_987_000_000  # milliseconds: Agave's precision
        os.utime(p, ns=(ns, ns))
        want[p.name] = (p.stat().st_size, ns)
    (d / "sub").mkdir()
    m = mount_factory(emu)
    seen = {}
    with os.scandir(m.path / "dated") as it:  # readdirplus: the kernel keeps what readdir gave it
        for e in it:
            s = e.stat(follow_symlinks=False)
            seen[e.name] = (s.st_size, s.st_mtime_ns, st.S_IMODE(s.st_mode), st.S_IFMT(s.st_mode))
    assert seen.pop("sub")[3] == st.S_IFDIR
    assert {n: v[:2] for n, v in seen.items()} == want
    assert {v[2:] for v in seen.values()} == {(0o644, st.S_IFREG)}
    m2 = mount_factory(emu)  # a lookup, without a listing in between: getattr's own way
    for name in ("f07", "f30"):
        s = os.stat(m2.path / "dated" / name)
        assert (s.st_size, s.st_mtime_ns) == want[name]
