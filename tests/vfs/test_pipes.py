"""vfs/pipes.py: a chunk spliced into pipes, within a mount-wide count of open pipes
(an unprivileged user's pipes share one kernel limit with the user's other programs)."""

from __future__ import annotations

import os

from agavefs.vfs import pipes
from agavefs.vfs.pipes import PipeData
from memory_backend import _SplicingStream


def test_fetch_splices_until_no_pipe_is_left_then_reads_and_counts_every_pipe():
    data = os.urandom(1_000_000)
    stream = _SplicingStream(data)  # splices at most 300,000 bytes a call
    before = pipes.open_pipes()
    held = [pipes._new_pipe() for _ in range(pipes.MAX_PIPES - before - 1)]
    try:
        assert pipes.open_pipes() == pipes.MAX_PIPES - 1
        got = pipes.fetch(stream, 400_000)  # a first pipe, then none left: the rest is read
        assert type(got) is bytes and got == data[:400_000]
        assert pipes.open_pipes() == pipes.MAX_PIPES - 1  # the one it used is closed
        held.append(pipes._new_pipe())
        assert pipes._new_pipe() is None
        assert pipes.fetch(stream, 1000) == data[400_000:401_000]  # none at all: read
    finally:
        for r, w in held:
            os.close(w)
            pipes._close_pipe(r)
    got = pipes.fetch(stream, 500_000)
    assert isinstance(got, PipeData) and [n for _, n in got.segments] == [300_000, 200_000]
    assert pipes.open_pipes() == before + 2
    assert got.take_bytes() == data[401_000:901_000]
    short = pipes.fetch(stream, 200_000)  # the stream ends first: what there is
    assert len(short) == 99_000
    short.close()
    assert pipes.open_pipes() == before
