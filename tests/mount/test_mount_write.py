"""Issue 5 through a real mount: writing with real tools, nothing lost.

Every test ends with ``agavefs umount`` (which drains the upload queue) and then
compares the emulator's backing directory with the source, byte for byte.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from mountsupport import Mount
from helpers import digest_tree

HIDDEN = ".agavefs~"


def run(*cmd, cwd=None, check=True, env=None, timeout=300):
    r = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if check:
        assert r.returncode == 0, f"{cmd}: {r.stdout}\n{r.stderr}"
    return r


def make_tree(root: Path, seed: int = 0, files: int = 40) -> Path:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        d = root / f"d{i % 4}" / f"e{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        size = rng.choice([0, 1, 100, 4096, 70_000, 1_000_000])
        (d / f"file {i} #%?+&.bin").write_bytes(rng.randbytes(size))
    (root / "ünïcödé.txt").write_text("UTF-8 name\n")
    (root / "empty-dir").mkdir(exist_ok=True)
    return root


def assert_same_tree(a: Path, b: Path) -> None:
    ta, tb = digest_tree(a), digest_tree(b)
    assert ta == tb
    assert not any(HIDDEN in k for k in tb)


def finish(m: Mount) -> None:
    r = m.umount()
    assert r.returncode == 0, r.stderr + m.log_tail()


def test_cp_a_and_cat(mnt: Mount, emu, tmp_path):
    src = make_tree(tmp_path / "src")
    run("cp", "-a", str(src), str(mnt.path / "copy"))
    assert_same_tree(src, mnt.path / "copy")  # read-your-writes before anything landed
    finish(mnt)
    assert_same_tree(src, emu.home() / "copy")


def test_shell_redirect_and_dd_send_one_upload_per_file(mnt: Mount, emu, tmp_path):
    """`cat src > f` and dd close a duplicate of the fresh, still empty file before
    writing: that close must not upload an empty version (one upload per file), and
    the file must still be journaled (tests/reliability/test_kill9.py)."""
    src = tmp_path / "src.bin"
    src.write_bytes(random.Random(5).randbytes(3 * 1024 * 1024 + 7))
    # the pause outlasts the upload grace: an empty version sealed at the first close
    # would be on its way before the bytes come
    run("sh", "-c", f"{{ sleep 1; cat '{src}'; }} > '{mnt.path / 'redirected.bin'}'")
    run("dd", f"if={src}", f"of={mnt.path / 'dd.bin'}", "bs=1M", "status=none")
    run("sh", "-c", f": > '{mnt.path / 'empty.txt'}'")
    finish(mnt)
    for name in ("redirected.bin", "dd.bin"):
        assert (emu.home() / name).read_bytes() == src.read_bytes()
    assert (emu.home() / "empty.txt").read_bytes() == b""
    uploads = [e for e in emu.access_entries() if e["method"] == "POST" and "/files/v2/media/" in e["path"]]
    assert len(uploads) == 3, [(e["path"], e["bytes_in"]) for e in uploads]


def test_rsync_a_twice(mnt: Mount, emu, tmp_path):
    if shutil.which("rsync") is None:
        pytest.fail("rsync is not installed (scripts/setup.sh installs it)")
    src = make_tree(tmp_path / "src", seed=1)
    run("rsync", "-a", f"{src}/", f"{mnt.path / 'r'}/")
    (src / "d0" / "e0" / "new.txt").write_text("added later")
    run("rsync", "-a", "--delete", f"{src}/", f"{mnt.path / 'r'}/")
    assert_same_tree(src, mnt.path / "r")
    finish(mnt)
    assert_same_tree(src, emu.home() / "r")


def test_tar_extract_and_create(mnt: Mount, emu, tmp_path):
    src = make_tree(tmp_path / "src", seed=2, files=20)
    archive = tmp_path / "a.tar"
    run("tar", "-cf", str(archive), "-C", str(src), ".")
    (mnt.path / "x").mkdir()
    run("tar", "-xf", str(archive), "-C", str(mnt.path / "x"))
    run("tar", "-cf", str(mnt.path / "back.tar"), "-C", str(mnt.path / "x"), ".")
    finish(mnt)
    assert_same_tree(src, emu.home() / "x")
    check = tmp_path / "check"
    check.mkdir()
    run("tar", "-xf", str(emu.home() / "back.tar"), "-C", str(check))
    assert_same_tree(src, check)


def test_git_inside_the_mount(mnt: Mount, emu, tmp_path):
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t", HOME=str(tmp_path))
    repo = mnt.path / "repo"
    run("git", "init", "-q", str(repo), env=env)
    for i in range(10):
        (repo / f"f{i}.txt").write_text(f"line {i}\n" * (i + 1))
    run("git", "add", ".", cwd=repo, env=env)
    run("git", "commit", "-qm", "first", cwd=repo, env=env)
    (repo / "f3.txt").write_text("changed\n")
    run("git", "commit", "-qam", "second", cwd=repo, env=env)
    run("git", "clone", "-q", str(repo), str(mnt.path / "clone"), env=env)
    run("git", "fsck", "--full", cwd=mnt.path / "clone", env=env)
    log = run("git", "log", "--oneline", cwd=mnt.path / "clone", env=env).stdout
    assert len(log.splitlines()) == 2
    finish(mnt)
    run("git", "fsck", "--full", cwd=emu.home() / "repo", env=env)
    assert (emu.home() / "clone" / "f3.txt").read_text() == "changed\n"
    assert run("git", "status", "--porcelain", cwd=emu.home() / "repo", env=env).stdout == ""


def test_editor_save_dd_notrunc_and_append(mnt: Mount, emu):
    (emu.home() / "doc.txt").write_text("version 1\n")
    (emu.home() / "blob").write_bytes(b"A" * 100_000)
    # editor-style save: write a temp file, fsync, rename over the original
    tmp = mnt.path / ".doc.txt.tmp"
    with open(tmp, "w") as f:
        f.write("version 2\n")
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, mnt.path / "doc.txt")
    assert (mnt.path / "doc.txt").read_text() == "version 2\n"
    # dd into the middle without truncating
    run("dd", "if=/dev/zero", f"of={mnt.path / 'blob'}", "bs=1000", "seek=50", "count=2", "conv=notrunc",
        "status=none")
    # >> appends
    with open(mnt.path / "doc.txt", "a") as f:
        f.write("appended\n")
    subprocess.run(f"echo more >> '{mnt.path / 'doc.txt'}'", shell=True, check=True)
    os.truncate(mnt.path / "blob", 120_000)
    finish(mnt)
    assert (emu.home() / "doc.txt").read_text() == "version 2\nappended\nmore\n"
    expected = bytearray(b"A" * 100_000)
    expected[50_000:52_000] = b"\0" * 2000
    expected += b"\0" * 20_000
    assert (emu.home() / "blob").read_bytes() == bytes(expected)
    assert sorted(p.name for p in emu.home().iterdir()) == ["blob", "doc.txt"]


def test_slow_staging_is_readable_at_once_and_umount_waits(emulator_factory, mount_factory, tmp_path):
    emu = emulator_factory("--staging-delay", "3")
    m = mount_factory(emu)
    data = os.urandom(3 * 1024 * 1024)
    (m.path / "slow.bin").write_bytes(data)
    start = time.monotonic()
    assert (m.path / "slow.bin").read_bytes() == data  # from the spool
    assert time.monotonic() - start < 2.5
    assert not (emu.home() / "slow.bin").exists() or (emu.home() / "slow.bin").read_bytes() != data
    status = m.agavefs("status", "--json", str(m.path))
    assert status.returncode == 0 and '"pending"' in status.stdout and "slow.bin" in status.stdout
    r = m.umount()
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - start >= 2.5
    assert (emu.home() / "slow.bin").read_bytes() == data


def test_fsync_waits_for_the_server(emulator_factory, mount_factory):
    emu = emulator_factory("--staging-delay", "1")
    m = mount_factory(emu)
    with open(m.path / "durable.txt", "wb") as f:
        f.write(b"durable bytes")
        f.flush()
        os.fsync(f.fileno())
        assert (emu.home() / "durable.txt").read_bytes() == b"durable bytes"


def test_sync_close(emulator_factory, mount_factory):
    emu = emulator_factory("--staging-delay", "1")
    m = mount_factory(emu, "--sync-close")
    (m.path / "closed.txt").write_bytes(b"on the server at close")
    assert (emu.home() / "closed.txt").read_bytes() == b"on the server at close"


def test_overwrite_never_shows_partial_or_empty(emulator_factory, mount_factory):
    emu = emulator_factory("--staging-delay", "1")
    old = b"old content " * 1000
    (emu.home() / "keep.txt").write_bytes(old)
    m = mount_factory(emu)
    (m.path / "keep.txt").write_bytes(b"new content " * 2000)
    deadline = time.monotonic() + 30
    seen = set()
    while time.monotonic() < deadline:
        try:
            current = (emu.home() / "keep.txt").read_bytes()
        except FileNotFoundError:  # the replace's moment between the two renames (SEMANTICS.md)
            continue
        seen.add(current[:12])
        assert current in (old, b"new content " * 2000), "a partial or empty version was visible"
        if current != old:
            break
        time.sleep(0.05)
    finish(m)
    assert (emu.home() / "keep.txt").read_bytes() == b"new content " * 2000


def test_umount_force_leaves_the_journal_and_the_next_mount_finishes(emulator_factory, mount_factory):
    emu = emulator_factory("--staging-delay", "30")
    m = mount_factory(emu)
    (m.path / "later.txt").write_text("finish me")
    r = m.umount("--force")
    assert r.returncode == 0, r.stderr
    assert not (emu.home() / "later.txt").exists()
    journal = list((m.cache_dir / "journal").glob("*.json"))
    assert journal, "no journal left by umount --force"
    emu.restart("--staging-delay", "0.2")
    m.start()
    assert (m.path / "later.txt").read_text() == "finish me"
    finish(m)
    assert (emu.home() / "later.txt").read_text() == "finish me"
    assert not list((m.cache_dir / "journal").glob("*.json"))


def test_sigkill_in_the_middle_of_a_copy(emulator_factory, mount_factory, tmp_path):
    emu = emulator_factory("--staging-delay", "1")
    src = make_tree(tmp_path / "src", seed=5, files=30)
    m = mount_factory(emu)
    copied = []
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = path.relative_to(src)
        (m.path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, m.path / rel)  # closed: it must survive
        copied.append(rel)
        if len(copied) == 20:
            break
    m.kill(signal.SIGKILL)
    m.start()
    for rel in copied:
        assert (m.path / rel).read_bytes() == (src / rel).read_bytes()
    finish(m)
    for rel in copied:
        assert (emu.home() / rel).read_bytes() == (src / rel).read_bytes(), rel
    assert not [p for p in emu.home().rglob("*") if HIDDEN in p.name]


def test_emulator_restart_mid_upload(emulator_factory, mount_factory):
    emu = emulator_factory("--staging-delay", "2")
    m = mount_factory(emu, "--staging-timeout", "10")
    data = os.urandom(2 * 1024 * 1024)
    (m.path / "survivor.bin").write_bytes(data)
    time.sleep(0.8)  # the upload is in the staging queue now
    emu.restart("--staging-delay", "0.3")  # the queued staging job is lost (STAGING_FAILED)
    finish(m)
    assert (emu.home() / "survivor.bin").read_bytes() == data


def test_write_2gib_keeps_the_daemon_small(mnt: Mount, emu):
    size = 2 * 1024 ** 3
    chunk = os.urandom(1024 * 1024)
    digest = hashlib.sha256()
    with open(mnt.path / "huge.bin", "wb") as f:
        for _ in range(size // len(chunk)):
            f.write(chunk)
            digest.update(chunk)
    with open(f"/proc/{mnt.proc.pid}/status") as f:
        hwm = [l for l in f if l.startswith("VmHWM")][0]
    peak_kib = int(hwm.split()[1])
    finish(mnt)
    got = hashlib.sha256()
    with open(emu.home() / "huge.bin", "rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            got.update(block)
    assert got.hexdigest() == digest.hexdigest()
    print(f"daemon peak RSS while writing 2 GiB: {peak_kib / 1024:.1f} MiB")
    assert peak_kib < 150 * 1024


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_then_unmounts(emulator_factory, mount_factory, sig):
    emu = emulator_factory("--staging-delay", "1.5")
    m = mount_factory(emu)
    (m.path / "on-signal.txt").write_text("drained before exit")
    m.proc.send_signal(sig)
    assert m.proc.wait(60) == 0
    assert not os.path.ismount(m.path)
    assert (emu.home() / "on-signal.txt").read_text() == "drained before exit"
    assert not list((m.cache_dir / "journal").glob("*.json"))


def test_append_after_the_kernel_entry_expired_keeps_the_content(mount_factory, emu):
    """`>>` opens with O_CREAT|O_APPEND; once the kernel's entry for the name has
    expired it sends CREATE without a lookup, and the file must be opened, not replaced."""
    m = mount_factory(emu, "--attr-ttl", "1", "--dir-ttl", "1", "--negative-ttl", "1")
    (emu.home() / "log.txt").write_bytes(b"line 1\n" * 1000)
    assert (m.path / "log.txt").stat().st_size == 7000
    time.sleep(2.5)  # past entry_timeout/attr_timeout
    run("sh", "-c", f"echo 'line 2' >> '{m.path / 'log.txt'}'")
    with pytest.raises(FileExistsError):
        os.open(m.path / "log.txt", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    finish(m)
    assert (emu.home() / "log.txt").read_bytes() == b"line 1\n" * 1000 + b"line 2\n"


def test_reader_open_when_the_upload_lands_sees_the_content(mount_factory, emu):
    """The soak's find: fsync lands a file, a reader opens it, the writer closes; the
    file's local state went away under the open reader, and the attributes the kernel
    asks for by file handle before a read said size 0: it read nothing."""
    m = mount_factory(emu, "--attr-ttl", "0.5")
    data = b"landed " * 3000
    wfd = os.open(m.path / "f.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(wfd, data)
        os.fsync(wfd)
        rfd = os.open(m.path / "f.bin", os.O_RDONLY)
    finally:
        os.close(wfd)
    try:
        time.sleep(1.0)  # the writer's release has run; past --attr-ttl, a read asks the mount
        assert os.pread(rfd, len(data) + 100, 0) == data  # (the kernel asks by file handle)
        assert os.fstat(rfd).st_size == len(data)
    finally:
        os.close(rfd)
    assert (m.path / "f.bin").read_bytes() == data
    finish(m)
    assert (emu.home() / "f.bin").read_bytes() == data


def test_a_reader_opened_first_sees_what_a_writer_writes(mount_factory, emu):
    """Two descriptors of one file, the reader opened before the writer: a read of a
    part the kernel has not cached must come from what was written, not from the
    server's older version (the two would mix in the reader's view)."""
    old = bytes(range(256)) * 32 * 1024  # 8 MiB
    (emu.home() / "shared.bin").write_bytes(old)
    m = mount_factory(emu)
    rfd = os.open(m.path / "shared.bin", os.O_RDONLY)
    try:
        assert os.pread(rfd, 4096, 0) == old[:4096]  # cached: the start only (read-ahead is smaller)
        wfd = os.open(m.path / "shared.bin", os.O_WRONLY)
        try:
            # part of a page: the kernel does not keep that page, so the reader's read of it
            # comes to agavefs
            assert os.pwrite(wfd, b"W" * 100, (6 << 20) + 10) == 100
            new = old[:(6 << 20) + 10] + b"W" * 100 + old[(6 << 20) + 110:]
            assert os.pread(rfd, 8192, 6 << 20) == new[6 << 20:(6 << 20) + 8192]
        finally:
            os.close(wfd)
        assert os.pread(rfd, 4096, 6 << 20) == new[6 << 20:(6 << 20) + 4096]
    finally:
        os.close(rfd)
    finish(m)
    assert (emu.home() / "shared.bin").read_bytes() == new


def _streamed(m: Mount) -> list[dict]:
    from agavefs import control
    return control.status_of(str(m.path)).get("streaming", [])


def test_a_large_copy_uploads_while_it_is_written(mnt: Mount, emu):
    """A file written from empty by appends streams to the server as it grows: most of
    it is sent before the close, one upload in all, and the server gets every byte."""
    rng = random.Random(11)
    chunks = [rng.randbytes(1024 * 1024) for _ in range(24)]
    with open(mnt.path / "big.bin", "wb") as f:
        for c in chunks[:16]:
            f.write(c)
        f.flush()
        deadline = time.monotonic() + 20
        while not any(s["path"] == "/big.bin" and s["sent"] >= 12 * 1024 * 1024 for s in _streamed(mnt)):
            assert time.monotonic() < deadline, _streamed(mnt)
            time.sleep(0.05)
        for c in chunks[16:]:
            f.write(c)
    finish(mnt)
    assert (emu.home() / "big.bin").read_bytes() == b"".join(chunks)
    uploads = [e for e in emu.access_entries() if e["method"] == "POST" and "/files/v2/media/" in e["path"]]
    assert len(uploads) == 1 and uploads[0]["status"] == 202, uploads
    assert not [p for p in emu.home().rglob("*") if HIDDEN in p.name]


def test_a_header_patched_after_the_body_is_not_lost_to_the_stream(mnt: Mount, emu):
    """Archivers and muxers write the body, then seek back and patch a header: the
    stream already sent the old header, so it must be dropped, and the file uploaded
    at its close with the patch."""
    rng = random.Random(12)
    body = bytearray(rng.randbytes(20 * 1024 * 1024))
    with open(mnt.path / "archive.bin", "wb") as f:
        f.write(body)
        f.flush()
        deadline = time.monotonic() + 20
        while not _streamed(mnt):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        f.seek(100)
        f.write(b"PATCHED HEADER")
        body[100:114] = b"PATCHED HEADER"
    finish(mnt)
    assert (emu.home() / "archive.bin").read_bytes() == bytes(body)
    assert not [p for p in emu.home().rglob("*") if HIDDEN in p.name]


def test_umount_of_a_large_file_leaves_nothing_behind(mnt, emu):
    """An unmount's drain answers once the server has the file; the spool file (an
    unlink of a large file takes ~0.1 s) goes while the unmount proceeds, and the
    daemon waits for that before it exits (and then skips the interpreter's
    teardown): the server has the bytes, the daemon ends with 0 and its last log
    line written, and the cache directory keeps no data, record or lost+found."""
    data = os.urandom(40 * 1024 * 1024)  # streamed while written (8 MiB on)
    with open(mnt.path / "big.bin", "wb") as f:
        for off in range(0, len(data), 1 << 20):
            f.write(data[off:off + (1 << 20)])
    finish(mnt)
    assert mnt.proc.returncode == 0
    assert (emu.home() / "big.bin").read_bytes() == data
    assert "filesystem unmounted" in mnt.log_text().rstrip().splitlines()[-1]
    assert not list((mnt.cache_dir / "data").iterdir())
    assert not list((mnt.cache_dir / "journal").iterdir())
    assert not (mnt.cache_dir / "lost+found").exists()


def test_a_file_renamed_over_or_deleted_while_open_lives_on_for_its_descriptors(mount_factory, emu):
    """POSIX, as the model test found it broken: descriptors opened on a server file
    before it was renamed over (an editor's save, `mv`) or unlinked keep reading it, and
    one opened for writing changes its own copy; nothing of it reaches the file that took
    the name, and nothing is left on the server once they are closed."""
    old = bytes(range(256)) * 4096  # 1 MiB: more than one read-ahead of the kernel
    (emu.home() / "a.txt").write_bytes(old)
    (emu.home() / "d.txt").write_bytes(b"D" * 100)
    (emu.home() / "gone.bin").write_bytes(old[::-1])
    m = mount_factory(emu)
    rfd = os.open(m.path / "a.txt", os.O_RDONLY)
    wfd = os.open(m.path / "a.txt", os.O_RDWR)
    gfd = os.open(m.path / "gone.bin", os.O_RDONLY)
    try:
        assert os.pread(rfd, 4096, 0) == old[:4096]
        os.rename(m.path / "d.txt", m.path / "a.txt")
        os.unlink(m.path / "gone.bin")
        os.ftruncate(wfd, 1955)
        assert os.pread(wfd, 4000, 0) == old[:1955]
        assert os.pread(rfd, len(old), 0) == old[:1955]  # the same file, truncated
        assert os.pread(gfd, len(old), 0) == old[::-1]
        assert (m.path / "a.txt").read_bytes() == b"D" * 100
        assert sorted(os.listdir(m.path)) == ["a.txt"]
    finally:
        for fd in (rfd, wfd, gfd):
            os.close(fd)
    finish(m)
    assert sorted(p.name for p in emu.home().iterdir()) == ["a.txt"]  # nothing hidden left
    assert (emu.home() / "a.txt").read_bytes() == b"D" * 100
