"""RemoteReader / Prefetch over the in-memory backend: the right bytes in any order.

The kernel sends concurrent, reordered reads for one sequential reader (async
read-ahead); a read that waited while readers further ahead trimmed the window must
fall back to a ranged read, never return short or wrong bytes.
"""

from __future__ import annotations

import concurrent.futures
import os
import random

from agavefs.vfs.pipes import PipeData
from agavefs.vfs.reader import CHUNK, ReadBudget, RemoteReader
from memory_backend import MemoryBackend

MiB = 1 << 20


def make(data: bytes, window_max=32 * MiB, splicing=False):
    backend = MemoryBackend(splicing=splicing)
    backend.files["/f"] = data
    return backend, RemoteReader(backend, "/f", len(data), window_min=MiB, window_max=window_max,
                                 budget=ReadBudget(64 * MiB), timeout=10)


def test_sequential_reads_stream_once_and_return_the_right_bytes():
    data = os.urandom(9 * MiB + 12345)
    backend, reader = make(data)
    got = bytearray()
    offset = 0
    while offset < len(data):
        chunk = reader.read(offset, MiB)
        got += chunk
        offset += len(chunk)
    reader.close()
    assert bytes(got) == data
    # a first read of a whole chunk from the start streams at once: one request in all
    assert backend.calls.get("stream") == 1 and not backend.calls.get("read")


def test_a_small_first_read_is_one_ranged_request_then_reads_stream():
    data = os.urandom(5 * MiB)
    backend, reader = make(data)
    assert reader.read(0, 16384) == data[:16384]  # a probe, `head`, a thumbnailer
    assert backend.calls.get("read") == 1 and not backend.calls.get("stream")
    got = bytearray(data[:16384])
    while len(got) < len(data):
        got += reader.read(len(got), MiB)
    reader.close()
    assert bytes(got) == data
    assert backend.calls.get("stream") == 1 and backend.calls.get("read") == 1


def test_aligned_reads_get_whole_chunks():
    data = os.urandom(4 * CHUNK)
    _, reader = make(data)
    reader.read(0, CHUNK)
    assert reader.read(CHUNK, CHUNK) == data[CHUNK:2 * CHUNK]
    assert reader.read(2 * CHUNK + 5, 100) == data[2 * CHUNK + 5:2 * CHUNK + 105]
    assert reader.read(3 * CHUNK - 10, 20) == data[3 * CHUNK - 10:3 * CHUNK + 10]
    reader.close()


def test_concurrent_reordered_reads_never_return_short_or_wrong_bytes():
    # 48 reads in flight spread over 6 MiB, shuffled: some wait for the stream while
    # others, further ahead, get their bytes and trim the window behind them (this
    # returned short reads before the re-check after the wait)
    data = os.urandom(48 * MiB)
    _, reader = make(data)
    reader.read(0, MiB)
    reader.read(MiB, MiB)  # the read-ahead runs
    rng = random.Random(3)
    size = 128 * 1024
    offsets = list(range(2 * MiB, len(data), size))
    with concurrent.futures.ThreadPoolExecutor(48) as pool:
        for i in range(0, len(offsets), 48):
            batch = offsets[i:i + 48]
            rng.shuffle(batch)
            futures = {off: pool.submit(reader.read, off, size) for off in batch}
            for off, fut in futures.items():
                assert fut.result(timeout=30) == data[off:off + size], off
    reader.close()


def test_late_reads_behind_the_window_do_not_restart_the_stream():
    """With a large kernel read-ahead (read_ahead_kb 4096) some reads of a sequential
    reader arrive after reads several MiB further on, behind what the window keeps:
    they are read by range, and the stream goes on (it was closed and reopened each
    time: 64-311 GETs for one sequential read of 1 GiB)."""
    data = os.urandom(32 * MiB)
    backend, reader = make(data)
    # two late chunks in a row (two "misses" closed the stream before), after chunk 14;
    # later, chunks 20 and 21 come as late (after chunk 26)
    order = [i for i in range(32) if i not in (8, 9, 20, 21)]
    order[order.index(15):order.index(15)] = [8, 9]
    order[order.index(27):order.index(27)] = [20, 21]
    for i in order:
        assert reader.read(i * MiB, MiB) == data[i * MiB:(i + 1) * MiB], i
    reader.close()
    assert backend.calls.get("stream") == 1
    # the first late chunks by range; the window then keeps that much behind, so the
    # next ones as late come from it
    assert backend.calls.get("read") == 2


def test_reads_far_behind_the_window_are_seeks_that_end_the_stream():
    """A read further back than any kernel read-ahead lags is the reader seeking (it
    has become random): two in a row close the stream, as reads far ahead do."""
    data = os.urandom(40 * MiB)
    backend, reader = make(data)
    for i in range(30):
        reader.read(i * MiB, MiB)
    assert reader._prefetch is not None
    assert reader.read(2 * MiB, 4096) == data[2 * MiB:2 * MiB + 4096]
    assert reader._prefetch is not None  # one miss
    assert reader.read(5 * MiB, 4096) == data[5 * MiB:5 * MiB + 4096]
    assert reader._prefetch is None  # two: the stream is closed
    reader.close()
    assert backend.calls.get("stream") == 1 and backend.calls.get("read") == 2


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def as_bytes(data) -> bytes:
    return data.take_bytes() if isinstance(data, PipeData) else data


def test_whole_chunks_held_in_pipes_are_handed_over_once_and_parts_read_as_bytes():
    """A stream that can splice fills the window with pipes: a read of exactly one
    chunk gets them (read once; the same chunk again is read by range), a read of part
    of a chunk or across two gets bytes, and no pipe outlives its reader."""
    data = os.urandom(8 * CHUNK + 777)
    before = open_fds()
    backend, reader = make(data, splicing=True)
    first = reader.read(0, CHUNK, pipes=True)
    assert isinstance(first, PipeData) and len(first) == CHUNK
    assert len(first.segments) == 2  # the first pipe "filled up" at SPLICE_PIECE bytes
    assert first.take_bytes() == data[:CHUNK]
    assert reader.read(0, CHUNK, pipes=True) == data[:CHUNK]  # handed out already: by range
    assert backend.calls.get("read") == 1
    assert reader.read(CHUNK + 10, 100, pipes=True) == data[CHUNK + 10:CHUNK + 110]
    assert reader.read(2 * CHUNK - 50, 100, pipes=True) == data[2 * CHUNK - 50:2 * CHUNK + 50]
    assert reader.read(3 * CHUNK, CHUNK) == data[3 * CHUNK:4 * CHUNK]  # no pipes wanted: bytes
    got = bytearray(data[:4 * CHUNK])
    while len(got) < len(data):
        got += as_bytes(reader.read(len(got), CHUNK, pipes=True))
    assert bytes(got) == data
    reader.close()
    assert backend.calls.get("stream") == 1 and backend.calls.get("read") == 1
    assert open_fds() == before


def test_concurrent_reordered_reads_from_pipes_never_return_short_or_wrong_bytes():
    data = os.urandom(24 * MiB + 5)
    before = open_fds()
    backend, reader = make(data, splicing=True)
    assert as_bytes(reader.read(0, CHUNK, pipes=True)) == data[:CHUNK]
    rng = random.Random(5)
    offsets, off = [], CHUNK
    while off < len(data):  # mostly whole chunks, some parts of one, some across two
        size = rng.choice([CHUNK, CHUNK, CHUNK, 4096, CHUNK // 3 + 1])
        offsets.append((off, size))
        off += size
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for i in range(0, len(offsets), 16):
            batch = offsets[i:i + 16]
            rng.shuffle(batch)
            futures = {o: pool.submit(lambda o=o: as_bytes(reader.read(o[0], o[1], pipes=True))) for o in batch}
            for (o, size), fut in futures.items():
                assert fut.result(timeout=30) == data[o:o + size], o
    reader.close()
    assert open_fds() == before


def test_the_second_chunk_read_first_starts_the_stream_from_the_start():
    """The kernel sends a sequential reader's first two chunks at once, and FUSE threads
    may take the second first: one stream from 0 serves both (a ranged read of the second
    chunk was a request of its own, and its bytes came again in the stream)."""
    data = os.urandom(6 * CHUNK + 99)
    backend, reader = make(data)
    assert reader.read(CHUNK, CHUNK) == data[CHUNK:2 * CHUNK]
    assert reader.read(0, CHUNK) == data[:CHUNK]
    offset = 2 * CHUNK
    while offset < len(data):
        assert reader.read(offset, CHUNK) == data[offset:offset + CHUNK]
        offset += CHUNK
    reader.close()
    assert backend.calls.get("stream") == 1 and not backend.calls.get("read")
    # in a file of less than two chunks, the second read ends at EOF
    small = os.urandom(CHUNK + 1000)
    backend, reader = make(small)
    assert reader.read(CHUNK, CHUNK) == small[CHUNK:]
    assert reader.read(0, CHUNK) == small[:CHUNK]
    reader.close()
    assert backend.calls.get("stream") == 1 and not backend.calls.get("read")


def test_a_first_read_elsewhere_stays_one_ranged_request():
    data = os.urandom(8 * CHUNK)
    for offset, size in ((CHUNK, 16384), (2 * CHUNK, CHUNK), (CHUNK + 4096, CHUNK)):
        backend, reader = make(data)
        assert reader.read(offset, size) == data[offset:offset + size]
        reader.close()
        assert backend.calls.get("read") == 1 and not backend.calls.get("stream"), (offset, size)
