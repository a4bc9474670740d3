"""Faults of the server one by one, through a real mount: restarts in the middle of
uploads and downloads, a lost staging job, a 416, a body cut short, a slow server,
and a full cache disk.  Whatever happens: never wrong bytes, nothing closed is lost."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from relsupport import count, no_hidden

MiB = 1024 * 1024


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_uncached(path: Path, chunk: int = 256 * 1024, pause: float = 0.0) -> bytes:
    """Read through the mount, not the kernel's page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        out = bytearray()
        while True:
            block = os.read(fd, chunk)
            if not block:
                return bytes(out)
            out += block
            if pause:
                time.sleep(pause)
    finally:
        os.close(fd)


def test_restarts_during_uploads_downloads_and_fsync(emulator_factory, mount_factory):
    emu = emulator_factory("--staging-delay", "0.5", "--latency", "5")
    originals = {f"big{i}.bin": os.urandom(12 * MiB + i) for i in range(3)}
    for name, data in originals.items():
        (emu.home() / name).write_bytes(data)
    m = mount_factory(emu, "--staging-timeout", "5")
    os.listdir(m.path)
    outcomes = {"same": 0, "eio": 0}
    wrong: list[str] = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            for name, data in originals.items():
                try:
                    got = _read_uncached(m.path / name, pause=0.002)
                except OSError as exc:
                    assert exc.errno in (errno.EIO, errno.ETIMEDOUT), exc
                    outcomes["eio"] += 1
                    continue
                if got == data:
                    outcomes["same"] += 1
                else:
                    wrong.append(f"{name}: {len(got)} bytes, sha {_sha(got)[:12]}")

    fsynced: dict[str, bytes] = {}
    fsync_errors: list[str] = []

    def writer():
        i = 0
        while not stop.is_set():
            data = os.urandom(300_000 + i)
            name = f"up{i}.bin"
            try:
                with open(m.path / name, "wb") as f:
                    f.write(data)
                    if i % 3 == 0:  # a server restart is absorbed: fsync waits it out
                        f.flush()
                        os.fsync(f.fileno())
                fsynced[name] = data
            except OSError as exc:
                fsync_errors.append(f"{name}: {exc!r}")
            i += 1

    threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
    for t in threads:
        t.start()
    try:
        for _ in range(3):
            time.sleep(1.2)
            emu.restart()  # cuts streams, uploads and staging jobs in the middle
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    assert not wrong, wrong
    assert not fsync_errors, fsync_errors
    assert outcomes["same"] >= 3, outcomes
    r = m.umount()
    assert r.returncode == 0, r.stderr + m.log_tail()
    for name, data in fsynced.items():
        assert (emu.home() / name).read_bytes() == data, name
    assert not no_hidden(emu.home())
    count(faults_injected=3, ops_under_faults=sum(outcomes.values()) + len(fsynced),
          files_verified=len(fsynced) + sum(outcomes.values()),
          bytes_compared=sum(map(len, fsynced.values())) + outcomes["same"] * 12 * MiB)
    print(f"\nrestarts x3: {outcomes['same']} whole-file reads correct, {outcomes['eio']} EIO, "
          f"{len(fsynced)} files written ({len(fsynced) // 3 + 1} with fsync), all landed")


def test_lost_staging_jobs_are_uploaded_again(emulator_factory, mount_factory, monkeypatch):
    monkeypatch.setenv("AGAVEFS_EMULATOR_STAGING_LOSE", "1")  # every staging job is lost
    emu = emulator_factory("--staging-delay", "0.1")
    m = mount_factory(emu, "--staging-timeout", "1")
    files = {f"lost{i}.txt": os.urandom(10_000 + i) for i in range(4)}
    for name, data in files.items():
        (m.path / name).write_bytes(data)
    deadline = time.monotonic() + 20
    while "made no progress" not in m.log_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "made no progress" in m.log_text()  # a lost job is noticed...
    for name, data in files.items():
        assert (m.path / name).read_bytes() == data  # ...and the data stays readable from the spool
        assert not (emu.home() / name).exists()
    status = m.agavefs("status", "--json", str(m.path))
    assert "lost" in status.stdout
    monkeypatch.delenv("AGAVEFS_EMULATOR_STAGING_LOSE")
    emu.restart("--staging-delay", "0.1")  # a server that keeps its jobs: the next attempt lands
    r = m.umount()
    assert r.returncode == 0, r.stderr + m.log_tail()
    for name, data in files.items():
        assert (emu.home() / name).read_bytes() == data
    assert not no_hidden(emu.home())
    count(files_verified=len(files), bytes_compared=sum(map(len, files.values())))


def test_416_after_the_file_shrank_behind_the_mount(emulator_factory, mount_factory):
    emu = emulator_factory("--range-mode", "agave")
    (emu.home() / "shrinks.bin").write_bytes(os.urandom(300_000))
    m = mount_factory(emu)
    assert os.stat(m.path / "shrinks.bin").st_size == 300_000  # the size is cached now
    smaller = os.urandom(120_000)
    (emu.home() / "shrinks.bin").write_bytes(smaller)  # behind the mount's back
    fd = os.open(m.path / "shrinks.bin", os.O_RDONLY)
    try:
        # ranges that end (and start) past the new end: Agave answers 416
        assert os.pread(fd, 50_000, 200_000) == b""
        assert os.pread(fd, 100_000, 100_000) == smaller[100_000:]
    finally:
        os.close(fd)
    assert _read_uncached(m.path / "shrinks.bin") == smaller  # never the old size padded with zeros
    assert any(e["status"] == 416 for e in emu.access_entries())
    count(faults_injected=1, files_verified=1, bytes_compared=len(smaller))


@pytest.mark.parametrize("fraction", ["0", "0.5"])
def test_body_cut_short_is_eio_or_the_right_bytes(emulator_factory, mount_factory, monkeypatch, fraction):
    monkeypatch.setenv("AGAVEFS_EMULATOR_TRUNCATE_BODY", fraction)
    emu = emulator_factory()
    data = os.urandom(3 * MiB)
    (emu.home() / "cut.bin").write_bytes(data)
    (emu.home() / "small.txt").write_bytes(b"0123456789" * 100)
    m = mount_factory(emu, "--op-timeout", "10")
    for name, want in (("cut.bin", data), ("small.txt", b"0123456789" * 100)):
        try:
            got = _read_uncached(m.path / name)
        except OSError as exc:
            assert exc.errno == errno.EIO, exc
            got = None
        assert got is None or got == want, f"{name}: wrong bytes ({len(got)})"
        if fraction == "0":
            assert got is None  # nothing ever arrives: EIO, not an empty or zero-filled file
        # the mount stays alive and serves what it can
        assert os.stat(m.path / name).st_size == len(want)
        count(faults_injected=1, files_verified=1, bytes_compared=len(want))
    os.statvfs(m.path)
    assert m.proc.poll() is None


def test_slow_server_latency_500(emulator_factory, mount_factory, tmp_path):
    emu = emulator_factory("--latency", "500", "--staging-delay", "0.2")
    (emu.home() / "there.txt").write_bytes(b"x" * 70_000)
    m = mount_factory(emu)
    assert sorted(os.listdir(m.path)) == ["there.txt"]
    assert (m.path / "there.txt").read_bytes() == b"x" * 70_000
    (m.path / "d").mkdir()
    (m.path / "d" / "new.txt").write_bytes(b"slow but sure")
    os.rename(m.path / "d" / "new.txt", m.path / "d" / "renamed.txt")
    assert (m.path / "d" / "renamed.txt").read_bytes() == b"slow but sure"
    r = m.umount()
    assert r.returncode == 0, r.stderr
    assert (emu.home() / "d" / "renamed.txt").read_bytes() == b"slow but sure"
    count(ops_under_faults=6, files_verified=2, bytes_compared=70_013)


def test_full_cache_disk_is_enospc_and_loses_nothing_closed(emulator_factory, mount_factory, tmp_path):
    small = tmp_path / "small-disk"
    small.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(small)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        emu = emulator_factory("--staging-delay", "0.2")
        m = mount_factory(emu, "--cache-dir", str(small / "cache"), "--negative-ttl", "60")
        os.listdir(m.path)
        emu.stop()  # closed files stay in the spool; their uploads retry until the disk is full
        closed = {}
        for i in range(5):
            data = os.urandom(200_000)
            (m.path / f"kept{i}.bin").write_bytes(data)
            closed[f"kept{i}.bin"] = data
        with pytest.raises(OSError) as exc:
            with open(m.path / "too-big.bin", "wb") as f:
                for _ in range(8):
                    f.write(os.urandom(512 * 1024))
        assert exc.value.errno == errno.ENOSPC, exc.value
        for name, data in closed.items():  # still readable, from the spool
            assert (m.path / name).read_bytes() == data
        os.statvfs(m.path)
        emu.start()  # every upload must still land although the cache disk is full
        r = m.umount(timeout=120)
        assert r.returncode == 0, r.stderr + m.log_tail()
        for name, data in closed.items():
            assert (emu.home() / name).read_bytes() == data, name
        assert not no_hidden(emu.home())
        count(files_verified=len(closed), bytes_compared=sum(map(len, closed.values())))
    finally:
        for mp in ("mnt0",):
            subprocess.run(["fusermount3", "-uz", str(tmp_path / mp)], capture_output=True)
        subprocess.run(["umount", str(small)], capture_output=True)
        if os.path.ismount(small):
            subprocess.run(["umount", "-l", str(small)], capture_output=True)
