"""The thin FUSE adapter: mfusepy (libfuse3) callbacks -> VFS calls, exceptions -> errnos.

Design note: this module knows nothing of HTTP and holds no state but a derived one
(packed readdir answers, below).  Each
callback traces itself at debug level, calls the VFS and maps any exception to an
errno (``agavefs.errors.to_errno``); nothing escapes as EINVAL or kills the mount.
What is here beyond translation is libfuse plumbing:

* ``AgaveFUSE.readdir_fuse_3`` fills full attributes with non-zero offsets and
  FUSE_FILL_DIR_PLUS when the kernel asks for READDIRPLUS, so ``ls -l`` needs no
  getattr upcall per entry (mfusepy passes only the file type); each entry's stat is
  packed in one ``struct`` call (``_StatPacker``: a warm ``ls -l`` of 10,000 entries
  0.10 -> 0.07 s).  Times are rounded to the microsecond (``_ns``).
* The only state here is derived: the packed form of the last few readdir answers
  (``AgaveFUSE._packed``; the VFS hands out the same entries list while a directory
  does not change, so a warm ``ls -l`` re-packs nothing).
* ``read_buf`` (libfuse's read with buffers, used instead of ``read``) answers with a
  ``struct fuse_bufvec`` in malloc'd memory that libfuse frees: bytes in one malloc'd
  buffer (what mfusepy's ``read`` does), or a read-ahead chunk held in pipes
  (vfs/pipes.py) as file-descriptor buffers, which libfuse splices on to /dev/fuse
  (FUSE_CAP_SPLICE_WRITE is asked for at init).  The pipes are closed at the same
  thread's next read_buf: libfuse is done with them when read_buf's caller returns.
  A cold read of 1 GiB: the daemon's CPU 0.75-0.8 s -> 0.38-0.47 s.
* ``utimens`` decodes UTIME_NOW / UTIME_OMIT, which arrive as raw nanosecond values.
* Each libfuse worker thread keeps its Python thread state (``_pin_thread_state``):
  ctypes wraps every callback from a foreign thread in PyGILState_Ensure/Release,
  which create a thread state and destroy it again each time.  The first callback on
  a thread leaves one Ensure outstanding, so the state lives as long as the thread -
  the pattern CPython's C-API documentation gives for foreign threads that call in
  repeatedly.  A warm ``find`` over 820 directories (3,280 upcalls), medians of 10 in
  two A/B pairs: 0.31 -> 0.19 s and 0.33 -> 0.24 s.
  libfuse keeps its workers (the daemon sets max_idle_threads = max_threads); a thread
  that ends anyway leaves its state behind, so at most PINNED_MAX are ever pinned.
* Extended attributes, links, mknod and locks are left unimplemented: mfusepy then
  does not register them and the kernel learns ENOSYS once (xattrs) or answers
  EPERM itself (links).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import operator
import os
import stat as st
import struct
import threading
import time

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")

import mfusepy as fuse  # noqa: E402  (needs FUSE_LIBRARY_NAME first)

from agavefs.errors import to_errno  # noqa: E402
from agavefs.vfs.core import READDIR_KEPT, READDIR_KEPT_ENTRIES  # noqa: E402
from agavefs.vfs.reader import CHUNK  # noqa: E402
from agavefs.vfs.memo import SizedLRU  # noqa: E402

log = logging.getLogger("agavefs.fuse")

UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
FUSE_READDIR_PLUS = 1
FUSE_FILL_DIR_PLUS = 2
# readdir answers kept packed for the kernel (AgaveFUSE._packed): the answers the VFS
# keeps (directories, entries in all), so a warm find re-packs nothing
PACKED_DIRS = READDIR_KEPT
PACKED_ENTRIES = READDIR_KEPT_ENTRIES


def _ns(seconds: float) -> int:
    """A time in float seconds as integer nanoseconds, rounded to the microsecond.

    A double near 1.6e9 s resolves 238 ns: ``int(t * 1e9)`` turned Agave's
    millisecond times into values like ...29.732999936 (``ls --full-time``, rsync and
    make compare those).  No time here is finer than a microsecond (Agave: ms)."""
    return round(seconds * 1_000_000) * 1000


def _to_ns(attrs: dict) -> dict:
    out = dict(attrs)
    for key in ("st_mtime", "st_ctime", "st_atime"):
        if key in out:
            out[key] = _ns(out[key])
    return out


class _StatPacker:
    """Writes a VFS attribute dict into a ``c_stat`` with one ``struct.pack_into``.

    readdir fills one entry per name (10,000 for ``ls -l`` of a big directory, again for
    every ``ls``): mfusepy's ``set_st_attrs`` (a ``setattr`` per field, a timespec per
    time) cost ~5 us an entry, most of a warm ``ls -l``.  The format is built from
    mfusepy's own ``c_stat`` layout (offsets and sizes of this platform), pad bytes
    included, so every field not set here is written as zero."""

    FIELDS = ("st_nlink", "st_mode", "st_uid", "st_gid", "st_size", "st_blksize", "st_blocks")
    TIMES = (("st_atimespec", "st_atime"), ("st_mtimespec", "st_mtime"), ("st_ctimespec", "st_ctime"))
    KEYS = frozenset(FIELDS) | {key for _, key in TIMES}

    def __init__(self, cls):
        spots = []  # (offset, size, signed, value slot)
        for name in self.FIELDS:
            field = getattr(cls, name)
            ctype = dict(cls._fields_)[name]
            spots.append((field.offset, field.size, ctype(-1).value < 0, name))
        for spec, key in self.TIMES:
            field = getattr(cls, spec)
            ts = dict(cls._fields_)[spec]
            for part in ("tv_sec", "tv_nsec"):
                sub = getattr(ts, part)
                spots.append((field.offset + sub.offset, sub.size, True, (key, part)))
        fmt, pos = "=", 0
        codes = {1: "b", 2: "h", 4: "i", 8: "q"}
        order = []
        for offset, size, signed, slot in sorted(spots, key=lambda x: x[0]):
            if offset < pos or size not in codes:
                raise ValueError("unexpected c_stat layout")
            fmt += "x" * (offset - pos) + (codes[size] if signed else codes[size].upper())
            pos = offset + size
            order.append(slot)
        fmt += "x" * (ctypes.sizeof(cls) - pos)
        self._pack_into = struct.Struct(fmt).pack_into
        # values are gathered as FIELDS then (sec, nsec) of each of TIMES, and put in
        # the layout's order by one itemgetter
        gathered = list(self.FIELDS) + [(key, part) for _, key in self.TIMES for part in ("tv_sec", "tv_nsec")]
        self._fields = operator.itemgetter(*self.FIELDS)
        self._layout = operator.itemgetter(*(gathered.index(slot) for slot in order))

    def pack(self, stat, attrs: dict, offset: int = 0) -> bool:
        """Write ``attrs`` into ``stat`` (a ``c_stat``, or an array of them at byte
        ``offset``: no ctypes object per entry).  False when ``attrs`` is not the VFS's
        usual set of keys (the caller falls back)."""
        if attrs.keys() != self.KEYS:
            return False
        mtime = attrs["st_mtime"]
        m = divmod(_ns(mtime), 1_000_000_000)
        # the VFS gives all three times the same value (Agave keeps one)
        a = m if attrs["st_atime"] == mtime else divmod(_ns(attrs["st_atime"]), 1_000_000_000)
        c = m if attrs["st_ctime"] == mtime else divmod(_ns(attrs["st_ctime"]), 1_000_000_000)
        self._pack_into(stat, offset, *self._layout(self._fields(attrs) + a + m + c))
        return True


try:
    _STAT_PACKER: _StatPacker | None = _StatPacker(fuse.c_stat)
except (AttributeError, KeyError, TypeError, ValueError):  # another platform's layout
    _STAT_PACKER = None


def _set_field_by_field(stat, attrs: dict) -> None:
    """mfusepy's way, for attributes the packer does not take (or no packer)."""
    ctypes.memset(ctypes.byref(stat), 0, ctypes.sizeof(stat))
    fuse.set_st_attrs(stat, _to_ns(attrs), use_ns=True)


def _fill_stat(stat, attrs: dict) -> None:
    if _STAT_PACKER is None or not _STAT_PACKER.pack(stat, attrs):
        _set_field_by_field(stat, attrs)


PINNED_MAX = 64  # thread states kept for libfuse threads over the mount's life
_pins = {"count": 0}
_pins_lock = threading.Lock()
_thread = threading.local()  # lives across callbacks only on a pinned thread


def _pin_thread_state() -> None:
    """Keep this thread's Python state for the thread's life (see the module note)."""
    if getattr(_thread, "pinned", False):
        return
    with _pins_lock:
        if _pins["count"] >= PINNED_MAX:
            return
        _pins["count"] += 1
    ctypes.pythonapi.PyGILState_Ensure()  # never released: the state outlives this callback
    _thread.pinned = True


def pinned_threads() -> int:
    """How many threads have had their state pinned (``agavefs status``)."""
    return _pins["count"]


# -- read_buf: replies as libfuse buffers ----------------------------------------------
FUSE_CAP_SPLICE_WRITE = 1 << 7
FUSE_BUF_IS_FD = 1 << 1
_libc = ctypes.CDLL(None)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]
_libc.free.restype = None
_libc.free.argtypes = [ctypes.c_void_p]
# PipeData handed to libfuse, by thread: libfuse splices them on right after read_buf
# returns, in the same thread, so they are closed at that thread's next read_buf
_handed: dict[int, object] = {}


@functools.lru_cache(maxsize=None)
def _bufvec_type(count: int):
    """libfuse's ``struct fuse_bufvec`` with ``count`` buffers (mfusepy declares its
    ``buf`` member as a pointer; it is an array in the struct)."""
    class FuseBufvec(ctypes.Structure):
        _fields_ = [("count", ctypes.c_size_t), ("idx", ctypes.c_size_t), ("off", ctypes.c_size_t),
                    ("buf", fuse.fuse_buf * count)]
    return FuseBufvec


def _bufvec(data):
    """A ``fuse_bufvec`` in malloc'd memory for libfuse to reply with and free: bytes are
    copied into one malloc'd buffer (as mfusepy's read does), a ``PipeData``'s pipes go
    as file-descriptor buffers."""
    segments = getattr(data, "segments", None)
    vec_type = _bufvec_type(len(segments) if segments else 1)
    vec_p = _libc.malloc(ctypes.sizeof(vec_type))
    if not vec_p:
        raise MemoryError("no memory for a read reply")
    vec = vec_type.from_address(vec_p)
    ctypes.memset(vec_p, 0, ctypes.sizeof(vec_type))
    if segments:
        _handed[threading.get_ident()] = data
        vec.count = len(segments)
        for buf, (fd, n) in zip(vec.buf, segments):
            buf.size, buf.flags, buf.fd = n, FUSE_BUF_IS_FD, fd
    else:
        if segments is not None:  # a PipeData without pipes holds no bytes
            data = b""
        mem = _libc.malloc(max(1, len(data)))
        if not mem:
            _libc.free(vec_p)
            raise MemoryError("no memory for a read reply")
        ctypes.memmove(mem, data, len(data))
        vec.count = 1
        vec.buf[0].size, vec.buf[0].mem = len(data), mem
    return ctypes.cast(vec_p, fuse.fuse_bufvec_p)


def _close_handed_pipes() -> None:
    data = _handed.pop(threading.get_ident(), None)
    if data is not None:
        data.close()


def translated(method):
    """Run a callback, log it at debug level, and turn every exception into an errno."""
    name = method.__name__

    @functools.wraps(method)
    def wrapper(self, *args):
        _pin_thread_state()
        start = time.monotonic()
        try:
            result = method(self, *args)
        except fuse.FuseOSError as exc:
            self._trace(name, args, exc.errno, start)
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes an errno
            code = to_errno(exc)
            if code == errno.EIO and not hasattr(exc, "errno"):
                log.exception("%s%r failed", name, args[:1])
            elif code not in (errno.ENOENT,):
                log.info("%s %s: %s", name, args[0] if args else "", exc)
            self._trace(name, args, code, start)
            raise fuse.FuseOSError(code) from None
        self._trace(name, args, 0, start)
        return result

    return wrapper


class AgaveOperations(fuse.Operations):
    use_ns = True

    def __init__(self, vfs, on_init=None):
        self.vfs = vfs
        self._on_init = on_init

    def _trace(self, name: str, args: tuple, code: int, start: float) -> None:
        if log.isEnabledFor(logging.DEBUG):
            ms = (time.monotonic() - start) * 1000
            what = args[0] if args and isinstance(args[0], str) else ""
            log.debug("fuse %s %s -> %s (%.1f ms)", name, what, errno.errorcode.get(code, code) if code else "ok", ms)

    # -- lifecycle -------------------------------------------------------------
    def init_with_config(self, conn_info, config_3) -> None:
        if config_3 is not None:
            # unlink/rename-over of an open file: the VFS keeps its content for the open
            # descriptors itself, so libfuse must not hide it as .fuse_hiddenNNN, and
            # calls on such descriptors arrive without a path
            config_3.hard_remove = 1
            config_3.nullpath_ok = 1
        if conn_info is not None:  # read_buf's chunks held in pipes are spliced on to the kernel
            conn_info.want |= conn_info.capable & FUSE_CAP_SPLICE_WRITE
            # the largest read the kernel sends: one read-ahead chunk (vfs/reader.py); libfuse
            # insists it equals the max_read mount option (daemon.fuse_options)
            conn_info.max_read = CHUNK
        if self._on_init is not None:
            self._on_init()

    def destroy(self, path) -> None:
        log.info("filesystem unmounted")

    # -- metadata --------------------------------------------------------------
    @translated
    def getattr(self, path, fh=None):
        return _to_ns(self.vfs.getattr(path, fh))

    @translated
    def opendir(self, path):
        return self.vfs.opendir(path)

    @translated
    def readdir(self, path, fh):
        return [name for name, _ in self.vfs.readdir_handle(fh)]

    @translated
    def readdir_entries(self, fh):
        return self.vfs.readdir_handle(fh)

    @translated
    def releasedir(self, path, fh):
        self.vfs.releasedir(fh)

    @translated
    def statfs(self, path):
        return self.vfs.statfs()

    @translated
    def chmod(self, path, mode):
        if path is not None:  # None: an unlinked open file
            self.vfs.chmod(path, mode)

    @translated
    def chown(self, path, uid, gid):
        if path is not None:
            self.vfs.chown(path, uid, gid)

    @translated
    def utimens(self, path, times=None):
        if path is None:
            return
        mtime = time.time()
        if times is not None:
            m = times[1]
            if m == UTIME_OMIT:
                mtime = None
            elif m != UTIME_NOW:
                mtime = m / 1e9
        self.vfs.utimens(path, mtime)

    # -- namespace -------------------------------------------------------------
    @translated
    def mkdir(self, path, mode):
        self.vfs.mkdir(path)

    @translated
    def rmdir(self, path):
        self.vfs.rmdir(path)

    @translated
    def unlink(self, path):
        self.vfs.unlink(path)

    @translated
    def rename(self, old, new):
        self.vfs.rename(old, new)

    @translated
    def symlink(self, target, source):
        raise fuse.FuseOSError(errno.EPERM)

    @translated
    def link(self, target, source):
        raise fuse.FuseOSError(errno.EPERM)

    @translated
    def mknod(self, path, mode, dev):
        if not st.S_ISREG(mode):
            raise fuse.FuseOSError(errno.EPERM)
        self.vfs.release(self.vfs.create(path, mode))

    # -- files -----------------------------------------------------------------
    @translated
    def create(self, path, mode, flags=None):
        return self.vfs.create(path, mode)

    @translated
    def open(self, path, flags):
        return self.vfs.open(path, flags)

    @translated
    def read_buf(self, path, bufpp, size, offset, fh):  # libfuse's read (there is no plain read)
        _close_handed_pipes()
        data = self.vfs.read(fh, offset, size, pipes=True)
        try:
            bufpp[0] = _bufvec(data)
        except BaseException:
            if hasattr(data, "segments"):
                data.close()
            raise
        return 0

    @translated
    def write(self, path, data, offset, fh):
        return self.vfs.write(fh, data, offset)

    @translated
    def truncate(self, path, length, fh=None):
        self.vfs.truncate(path, length, fh)

    @translated
    def flush(self, path, fh):
        self.vfs.flush(fh)

    @translated
    def fsync(self, path, datasync, fh):
        self.vfs.fsync(fh)

    @translated
    def release(self, path, fh):
        self.vfs.release(fh)


class AgaveFUSE(fuse.FUSE):
    """mfusepy's FUSE with a READDIRPLUS-aware readdir (see the module note), and a
    truncate that passes the file handle on (ftruncate of an unlinked open file)."""

    def truncate_fuse_3(self, path, length, fip):
        fh = fip.contents.fh if fip else None
        return self.operations.truncate(None if path is None else path.decode(self.encoding, self.errors),
                                        length, fh)

    def __init__(self, *args, **kwargs):
        self._packed_lock = threading.Lock()
        self._packed_dirs = packed_memo()  # id(entries) -> _PackedDir
        super().__init__(*args, **kwargs)  # runs the session

    def read_buf(self, path, bufpp, size, offset, fip):
        # mfusepy's own decodes the path, which is NULL for an unlinked open file
        return self.operations.read_buf(None if path is None else path.decode(self.encoding, self.errors),
                                        bufpp, size, offset, fip.contents.fh)

    def readdir_fuse_3(self, path, buf, filler, offset, fip, flags):
        packed = self._packed(self.operations.readdir_entries(fip.contents.fh))
        plus = FUSE_FILL_DIR_PLUS if flags & FUSE_READDIR_PLUS else 0
        names, stats, fills = packed.names, packed.stats, packed.fills
        for index in range(offset, len(names)):
            if filler(buf, names[index], stats[index], index + 1, fills[index] & plus) != 0:
                break
        return 0

    def _packed(self, entries) -> "_PackedDir":
        """``entries`` as the kernel gets them, packed once: a directory read again
        unchanged comes back from the VFS as the same list (its ``DirEntries``).  The
        last few are kept (PACKED_DIRS, PACKED_ENTRIES in all; the one in use always)."""
        key = id(entries)
        with self._packed_lock:
            hit = self._packed_dirs.get(key)
            if hit is not None and hit.entries is entries:
                return hit
        packed = _PackedDir(entries, self.encoding, self.errors)
        with self._packed_lock:
            self._packed_dirs.put(key, packed)
        return packed


def packed_memo() -> SizedLRU:
    """The adapter's packed readdir answers: PACKED_DIRS, PACKED_ENTRIES in all, and
    always the newest (else a directory larger than that is packed again for every
    readdir upcall of one listing)."""
    return SizedLRU(PACKED_DIRS, PACKED_ENTRIES, size=lambda p: len(p.names), keep_newest=True)


class _PackedDir:
    """A readdir answer in the kernel's terms: each entry's name encoded, its stat packed
    (a ``c_stat`` array) and its fill flag for READDIRPLUS (none for "." and "..", nor for
    an entry without attributes)."""

    __slots__ = ("entries", "names", "stats", "fills")

    def __init__(self, entries, encoding: str, errors: str):
        self.entries = entries  # held: its id is the key
        self.stats = stats = (fuse.c_stat * len(entries))()  # zeroed
        self.names = [name.encode(encoding, errors) for name, _ in entries]
        self.fills = fills = []
        pack = _STAT_PACKER.pack if _STAT_PACKER is not None else None
        size = ctypes.sizeof(fuse.c_stat)
        for index, (name, attrs) in enumerate(entries):
            if attrs is None:
                stats[index].st_mode = st.S_IFDIR
                fills.append(0)
                continue
            # packed in place in the array (10,000 entries for a cold ls -l)
            if pack is None or not pack(stats, attrs, index * size):
                _set_field_by_field(stats[index], attrs)
            fills.append(0 if name in (".", "..") else FUSE_FILL_DIR_PLUS)
