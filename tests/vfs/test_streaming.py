"""Streamed uploads (vfs/streaming.py): a file appended from empty uploads while it
is written, and every change that is not an append drops the stream before it
touches the spool, so the server only ever gets the file's real content.

Over the in-memory backend (its ``upload_stream`` consumes the chunks as they come);
``stream_min`` is lowered so that small files stream.  The same path is checked
through a real mount against the emulator in tests/mount/test_mount_write.py.
"""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from agavefs.vfs.writeback import is_temp_name
from memory_backend import MemoryBackend

KiB = 1024


@pytest.fixture
def backend():
    b = MemoryBackend(staging_delay=0.02)
    b.dirs.add("/d")
    return b


@pytest.fixture
def svfs(make_vfs):
    """A VFS whose files stream from 64 KiB on."""
    return lambda backend, **kw: make_vfs(backend, **{"stream_min": 64 * KiB, **kw})


def blob(n: int, seed: int = 1) -> bytes:
    return bytes((i * 131 + seed * 7 + i // 251) % 256 for i in range(n))


def append_in_pieces(vfs, fh, data: bytes, piece: int = 16 * KiB, start: int = 0) -> None:
    for off in range(0, len(data), piece):
        vfs.write(fh, data[off:off + piece], start + off)


def wait_for(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def start_streaming(vfs, backend, path: str, data: bytes) -> int:
    """Create ``path``, append ``data``, and wait until its stream has sent half of it."""
    fh = vfs.create(path)
    append_in_pieces(vfs, fh, data)
    wait_for(lambda: backend.streamed_bytes >= len(data) // 2)
    return fh


def no_temporary_files(backend) -> bool:
    return not any(is_temp_name(os.path.basename(p)) for p in list(backend.files) + list(backend.staging))


def test_a_file_written_by_appends_uploads_while_written(backend, svfs):
    vfs = svfs(backend)
    data = blob(512 * KiB)
    fh = start_streaming(vfs, backend, "/d/big.bin", data[:256 * KiB])
    # the stream started and sends what is written, before the close
    wait_for(lambda: backend.streamed_bytes == 256 * KiB)
    assert "/d/big.bin" not in backend.files
    append_in_pieces(vfs, fh, data[256 * KiB:], start=256 * KiB)
    vfs.release(fh)
    assert vfs.drain(timeout=10)
    assert backend.files == {"/d/big.bin": data}
    assert backend.calls.get("upload_stream") == 1
    assert not backend.calls.get("upload")  # the close sent only the tail: no second upload
    assert no_temporary_files(backend)


def test_small_files_do_not_stream(backend, svfs):
    vfs = svfs(backend)
    fh = vfs.create("/small")
    append_in_pieces(vfs, fh, blob(60 * KiB))
    vfs.release(fh)
    assert vfs.drain(timeout=10)
    assert backend.files["/small"] == blob(60 * KiB)
    assert not backend.calls.get("upload_stream")


@pytest.mark.parametrize("change", ["overwrite", "hole", "truncate", "fsync"])
def test_a_change_that_is_not_an_append_drops_the_stream(backend, svfs, change):
    vfs = svfs(backend)
    data = bytearray(blob(200 * KiB))
    fh = start_streaming(vfs, backend, "/f", bytes(data))
    if change == "overwrite":  # a header patched after the body was written (zip, mp4, tar)
        vfs.write(fh, b"HEADER", 10)
        data[10:16] = b"HEADER"
    elif change == "hole":
        vfs.write(fh, b"x", 250 * KiB)
        data += bytes(50 * KiB) + b"x"
    elif change == "truncate":
        vfs.truncate(None, 100 * KiB, fh)
        del data[100 * KiB:]
    else:
        vfs.fsync(fh)
        assert backend.files["/f"] == bytes(data)  # the snapshot is stored
    vfs.write(fh, b"tail", len(data))  # appends again: the file does not stream a second time
    data += b"tail"
    vfs.release(fh)
    assert vfs.drain(timeout=10)
    assert backend.files == {"/f": bytes(data)}
    assert backend.calls.get("upload_stream") == 1
    assert no_temporary_files(backend)


def test_unlink_and_rename_over_drop_the_stream(backend, svfs):
    vfs = svfs(backend)
    for name, how in (("/gone", "unlink"), ("/over", "rename")):
        fh = start_streaming(vfs, backend, name, blob(200 * KiB))
        if how == "unlink":
            vfs.unlink(name)
        else:
            fh2 = vfs.create("/other")
            vfs.write(fh2, b"winner", 0)
            vfs.release(fh2)
            vfs.rename("/other", name)
        vfs.write(fh, b"more", 200 * KiB)
        vfs.release(fh)
        backend.streamed_bytes = 0
    assert vfs.drain(timeout=10)
    assert backend.files == {"/over": b"winner"}
    assert no_temporary_files(backend)


def test_renaming_the_directory_of_a_streaming_file(backend, svfs):
    vfs = svfs(backend)
    data = blob(300 * KiB)
    fh = start_streaming(vfs, backend, "/d/f", data[:200 * KiB])
    vfs.rename("/d", "/e")  # does not wait for the open file (no EBUSY): the stream is dropped
    append_in_pieces(vfs, fh, data[200 * KiB:], start=200 * KiB)
    vfs.release(fh)
    assert vfs.drain(timeout=10)
    assert backend.files == {"/e/f": data}
    assert no_temporary_files(backend)


def test_a_writer_that_pauses_ends_the_stream(backend, svfs):
    vfs = svfs(backend, stream_idle=0.2)
    data = blob(300 * KiB)
    fh = start_streaming(vfs, backend, "/slow", data[:200 * KiB])
    time.sleep(0.6)  # longer than stream_idle: the request would idle on the server
    append_in_pieces(vfs, fh, data[200 * KiB:], start=200 * KiB)
    vfs.release(fh)
    assert vfs.drain(timeout=10)
    assert backend.files == {"/slow": data}
    assert backend.calls.get("upload_stream") == 1 and backend.calls.get("upload") == 1
    assert vfs.writeback.streaming  # a pause is no reason to stop streaming other files


def test_a_server_that_refuses_streams(backend, svfs):
    backend.refuse_streams = True
    vfs = svfs(backend)
    for name in ("/one", "/two"):
        fh = vfs.create(name)
        append_in_pieces(vfs, fh, blob(200 * KiB))
        vfs.release(fh)
    assert vfs.drain(timeout=10)
    assert backend.files == {"/one": blob(200 * KiB), "/two": blob(200 * KiB)}
    assert backend.calls.get("upload_stream") == 1  # learnt once, for the mount's life
    assert not vfs.writeback.streaming


def test_a_server_that_stores_streams_wrong(backend, svfs):
    """Accepted (202) but stored a byte short: the length check never passes, the
    staging counts as lost, the retry and every later file upload at their close."""
    backend.mangle_streams = True
    vfs = svfs(backend, staging_timeout=0.5)
    for name in ("/one", "/two"):
        fh = vfs.create(name)
        append_in_pieces(vfs, fh, blob(200 * KiB))
        vfs.release(fh)
        assert vfs.drain(timeout=20)
    assert backend.files["/one"] == blob(200 * KiB) and backend.files["/two"] == blob(200 * KiB)
    assert backend.calls.get("upload_stream") == 1 and backend.calls.get("upload") == 2
    assert not vfs.writeback.streaming
    assert no_temporary_files(backend)  # the short copy was deleted


def test_a_stream_that_fails_after_the_close_is_uploaded_again(backend, svfs):
    vfs = svfs(backend)
    gate = threading.Event()
    real = backend.upload_stream

    def failing_after_close(chunks, dir_path, name):
        def wrapped():
            for chunk in chunks():
                yield chunk
            gate.wait(5)  # the whole body was sent; the file is closed by now
            raise ConnectionResetError("connection reset after the body")
        return real(wrapped, dir_path, name)

    backend.upload_stream = failing_after_close
    data = blob(200 * KiB)
    fh = vfs.create("/f")
    append_in_pieces(vfs, fh, data)
    vfs.release(fh)
    gate.set()
    assert vfs.drain(timeout=20)
    assert backend.files == {"/f": data}
    assert backend.calls.get("upload") == 1  # retried as an ordinary upload of the sealed spool
    assert no_temporary_files(backend)


def test_a_crash_while_streaming(backend, svfs, tmp_path):
    vfs = svfs(backend)
    start_streaming(vfs, backend, "/f", blob(200 * KiB))
    journal = tmp_path / "spool" / "journal"
    wait_for(lambda: any(json.loads(p.read_text()).get("streaming") for p in journal.glob("*.json")))
    record = next(json.loads(p.read_text()) for p in journal.glob("*.json"))
    temp = record["leftovers"][0]
    # a server that stored the half-sent body anyway: the next mount deletes it
    with backend.lock:
        backend.files[temp] = b"partial"
    vfs.close(wait=True)  # the daemon "dies" with the file open
    vfs2 = svfs(backend)
    assert vfs2.recover() == 0  # nothing to upload: the file was never closed
    wait_for(lambda: temp not in backend.files)
    assert "/f" not in backend.files
    assert list((tmp_path / "spool" / "lost+found").iterdir())  # its bytes are kept locally
    assert not list(journal.glob("*.json"))
