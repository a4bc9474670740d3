"""The FUSE adapter's own plumbing (fuse_ops.py): the stat it hands the kernel for
each readdir entry, packed in one call instead of mfusepy's field-by-field
``set_st_attrs``, must be byte for byte what ``set_st_attrs`` would have written."""

from __future__ import annotations

import ctypes
import os
import stat as st

from hypothesis import given, settings, strategies as hst

from agavefs import fuse_ops
from agavefs.fuse_ops import _STAT_PACKER, AgaveFUSE, _fill_stat, _to_ns, fuse

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
@given(ATTRS)
def test_a_stat_whose_three_times_are_one_is_packed_alike(attrs):
    """The VFS gives atime, mtime and ctime one value (Agave keeps one): the packer
    converts it once."""
    attrs["st_atime"] = attrs["st_ctime"] = attrs["st_mtime"]
    assert _packed(attrs) == _by_mfusepy(attrs)
    attrs["st_ctime"] += 1.5
    assert _packed(attrs) == _by_mfusepy(attrs)


@settings(max_examples=100, deadline=None)
@given(ATTRS, hst.sampled_from(["st_blocks", "st_atime", "st_nlink"]))
def test_attributes_of_another_shape_take_the_field_by_field_way(attrs, missing):
    del attrs[missing]
    assert _packed(attrs) == _by_mfusepy(attrs)
    attrs["st_extra"] = 1
    assert _packed(attrs) == _by_mfusepy(attrs)


class _Ops:
    def __init__(self, entries):
        self.entries = entries

    def readdir_entries(self, fh):
        return self.entries


def _adapter(entries) -> AgaveFUSE:
    fs = object.__new__(AgaveFUSE)  # its __init__ would run a session
    fs._packed_lock, fs._packed_dirs = fuse_ops.threading.Lock(), fuse_ops.packed_memo()
    fs.operations, fs.encoding, fs.errors = _Ops(entries), "utf-8", "surrogateescape"
    return fs


class _Fip:
    class contents:
        fh = 1


def _read_all(fs, plus: bool, room: int) -> list:
    """What the kernel gets over as many readdir calls as a buffer of ``room`` entries
    needs: [(name, stat bytes, next offset, fill flag)]."""
    got, offset = [], 0
    while True:
        batch = []

        def filler(buf, name, stat, off, fill):
            if len(batch) == room:
                return 1  # full
            batch.append((name, bytes(stat), off, fill))
            return 0

        assert fs.readdir_fuse_3(b"/d", None, filler, offset, _Fip, 1 if plus else 0) == 0
        if not batch:
            return got
        got += batch
        offset = batch[-1][2]


NAMES = hst.text(hst.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), min_size=1, max_size=20)


@settings(max_examples=150, deadline=None)
@given(hst.lists(hst.tuples(NAMES, hst.one_of(hst.none(), ATTRS)), max_size=40, unique_by=lambda e: e[0]),
       hst.booleans(), hst.integers(1, 50))
def test_readdir_hands_the_kernel_every_entry_packed(kids, plus, room):
    """Each entry once, in order, with its offset, its stat as set_st_attrs would write
    it, and FUSE_FILL_DIR_PLUS only where the kernel asked for it and there are
    attributes ("." and ".." never); the same packed answer again for the same list."""
    entries = [("..", None)] + kids
    fs = _adapter(entries)
    got = _read_all(fs, plus, room)
    want = []
    for index, (name, attrs) in enumerate(entries):
        if attrs is None:
            stat = fuse.c_stat()
            stat.st_mode = st.S_IFDIR
            raw = bytes(stat)
        else:
            raw = _by_mfusepy(attrs)
        fill = fuse_ops.FUSE_FILL_DIR_PLUS if plus and attrs is not None and name not in (".", "..") else 0
        want.append((name.encode("utf-8", "surrogateescape"), raw, index + 1, fill))
    assert got == want
    assert _read_all(fs, plus, room) == want and len(fs._packed_dirs) == 1


def test_readdir_keeps_few_packed_answers():
    fs = _adapter([])
    lists = [[(".", None), ("..", None), (f"f{i}", None)] for i in range(fuse_ops.PACKED_DIRS + 3)]
    packed = [fs._packed(entries) for entries in lists]
    assert len(fs._packed_dirs) == fuse_ops.PACKED_DIRS
    assert fs._packed(lists[-1]) is packed[-1] and fs._packed(lists[0]) is not packed[0]
    huge = [(f"h{i}", None) for i in range(fuse_ops.PACKED_ENTRIES + 1)]
    assert fs._packed(huge) is fs._packed(huge)  # the one in use is kept, whatever its size
    assert list(fs._packed_dirs.values())[-1].entries is huge and len(fs._packed_dirs) == 1


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


class _ReadVFS:
    """The VFS as read_buf sees it: each read answers the next of ``answers``."""

    def __init__(self, answers):
        self.answers = list(answers)

    def read(self, fh, offset, size, pipes=False):
        assert pipes  # read_buf takes chunks held in pipes
        return self.answers.pop(0)


def _pipe_data(data: bytes):
    from agavefs.vfs.pipes import PipeData

    pd = PipeData()
    for part in (data[:3000], data[3000:]):
        r, w = os.pipe2(os.O_NONBLOCK)
        os.write(w, part)
        os.close(w)
        pd.segments.append((r, len(part)))
        pd.size += len(part)
    return pd


def test_read_buf_answers_with_libfuse_buffers_and_closes_handed_pipes():
    """read_buf hands libfuse a ``struct fuse_bufvec`` it can reply with and free: its
    buffers inline (libfuse's layout: 64 bytes for one buffer on 64-bit, where
    mfusepy's own type has a pointer), bytes in one malloc'd buffer, a chunk held in
    pipes as one descriptor buffer a pipe; the pipes are closed at the thread's next
    read_buf, when libfuse has spliced them on."""
    assert ctypes.sizeof(fuse_ops._bufvec_type(1)) == 24 + ctypes.sizeof(fuse.fuse_buf) == 64
    data = os.urandom(10000)
    piped = _pipe_data(data)
    ops = fuse_ops.AgaveOperations(_ReadVFS([piped, data[:5000]]))
    bufpp = ctypes.pointer(fuse.fuse_bufvec_p())
    assert ops.read_buf("/f", bufpp, 10000, 0, 7) == 0
    vec = fuse_ops._bufvec_type(2).from_address(ctypes.addressof(bufpp.contents.contents))
    assert (vec.count, vec.idx, vec.off) == (2, 0, 0)
    got = b""
    for buf, (fd, n) in zip(vec.buf, piped.segments):
        assert (buf.flags, buf.fd, buf.size, buf.mem) == (fuse_ops.FUSE_BUF_IS_FD, fd, n, None)
        got += os.read(buf.fd, buf.size)
    assert got == data
    fuse_ops._libc.free(ctypes.cast(bufpp.contents, ctypes.c_void_p))

    assert ops.read_buf("/f", bufpp, 5000, 0, 7) == 0  # bytes; the pipes handed before are closed
    assert piped.segments == []
    vec = fuse_ops._bufvec_type(1).from_address(ctypes.addressof(bufpp.contents.contents))
    buf = vec.buf[0]
    assert (vec.count, buf.flags, buf.size) == (1, 0, 5000)
    assert ctypes.string_at(buf.mem, buf.size) == data[:5000]
    fuse_ops._libc.free(buf.mem)
    fuse_ops._libc.free(ctypes.cast(bufpp.contents, ctypes.c_void_p))
