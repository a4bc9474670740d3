"""Issue 4 through a real mount: browsing and reading with ordinary tools.

Request counts come from the emulator's access log, so "ls -l costs only the
listing pages" is measured the way the benchmarks measure it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time

import pytest

from agavefs.client.api import LIST_PAGE
from helpers import paging
from mountsupport import Mount, is_live_mount


def media_gets(entries, since=0):
    return [e for e in entries[since:] if e["method"] == "GET" and "/files/v2/media/" in e["path"]]


def listings(entries, since=0):
    return [e for e in entries[since:] if "/files/v2/listings/" in e["path"]]


def run(*cmd, cwd=None, check=True, **kw):
    r = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=300, **kw)
    if check:
        assert r.returncode == 0, f"{cmd}: {r.stderr}"
    return r


def test_mount_shows_home_and_fsname(mnt: Mount, emu):
    (emu.home() / "hello.txt").write_text("hello\n")
    assert sorted(os.listdir(mnt.path)) == ["hello.txt"]
    assert (mnt.path / "hello.txt").read_text() == "hello\n"
    line = [l for l in open("/proc/mounts") if f" {mnt.path} " in l][0]
    line = line.replace("\\043", "#")  # /proc/mounts escapes '#' 
    assert line.startswith("agavefs#local.storage:/home/demo ")
    assert " fuse.agavefs " in line
    sv = os.statvfs(mnt.path)
    assert sv.f_bavail > 0 and sv.f_namemax == 255


def test_ls_l_of_250_entries_with_capped_pages(emulator_factory, mount_factory):
    emu = emulator_factory("--max-page", "7")
    d = emu.home() / "many"
    d.mkdir()
    for i in range(250):
        (d / f"f{i:03d}").write_bytes(b"x" * i)
    m = mount_factory(emu)
    out = run("ls", "-l", str(m.path / "many")).stdout.splitlines()
    assert len(out) == 251  # "total" + 250 entries
    assert out[1].split()[4] == "0" and out[-1].split()[4] == "249"


def test_ls_l_of_10000_entries_costs_only_the_listing_pages(emu, mount_factory):
    d = emu.home() / "big"
    d.mkdir()
    for i in range(10_000):
        (d / f"file-{i:05d}.dat").write_bytes(b"")
    m = mount_factory(emu)
    before = len(emu.access_entries())
    out = run("ls", "-l", str(m.path / "big")).stdout.splitlines()
    assert len(out) == 10_001
    cold = emu.access_entries()[before:]
    assert cold and all("/files/v2/listings/" in e["path"] for e in cold), {e["path"] for e in cold}
    pages = [paging(e["query"]) for e in cold if e["path"].rstrip("/").endswith("/big")]
    # the listing's pages of LIST_PAGE, each after the first starting one entry early
    # (paging.py), and nothing per entry (the directory's own lookup was answered by the
    # root's listing, which came with the root's lookup as the mount came up)
    listed = math.ceil(10_000 / (LIST_PAGE - 1))
    assert pages == [f"offset={k * (LIST_PAGE - 1)}&limit={LIST_PAGE}" for k in range(listed)], pages
    assert len(cold) == len(pages)
    again = len(emu.access_entries())
    assert len(run("ls", "-l", str(m.path / "big")).stdout.splitlines()) == 10_001
    run("find", str(m.path / "big"), "-name", "file-09999.dat")
    assert emu.access_entries()[again:] == []  # within the TTL: no request at all


def test_ls_l_of_a_big_directory_continues_after_its_lookup(emu, mount_factory):
    """ls -l top/big: big is not in a cached listing, so its lookup asks for its first
    page (100 entries, stat_with_children); the readdir that follows goes on from there
    (the next page repeats the lookup's last entry) instead of asking for it again: as
    many listing requests as a direct client's pages of LIST_PAGE."""
    d = emu.home() / "top" / "big"
    d.mkdir(parents=True)
    for i in range(10_000):
        (d / f"file-{i:05d}.dat").write_bytes(b"")
    m = mount_factory(emu)
    before = len(emu.access_entries())
    out = run("ls", "-l", str(m.path / "top" / "big")).stdout.splitlines()
    assert len(out) == 10_001 and len({line.split()[-1] for line in out[1:]}) == 10_000
    cold = emu.access_entries()[before:]
    assert all("/files/v2/listings/" in e["path"] for e in cold), {e["path"] for e in cold}
    pages = [paging(e["query"]) for e in cold if e["path"].rstrip("/").endswith("/big")]
    assert pages == ["offset=0&limit=100", f"offset=99&limit={LIST_PAGE}",
                     f"offset={99 + LIST_PAGE - 1}&limit={LIST_PAGE}"], pages
    assert len(pages) == math.ceil(10_001 / LIST_PAGE)  # the direct client's pages


def test_reads_match_backing_files(mnt: Mount, emu):
    data = random.Random(1).randbytes(5 * 1024 * 1024 + 123)
    (emu.home() / "blob.bin").write_bytes(data)
    (emu.home() / "empty").write_bytes(b"")
    run("cmp", str(mnt.path / "blob.bin"), str(emu.home() / "blob.bin"))
    assert (mnt.path / "empty").read_bytes() == b""
    out = subprocess.run(["dd", f"if={mnt.path / 'blob.bin'}", "bs=4096", "skip=300", "count=3",
                          "status=none"], capture_output=True, check=True).stdout
    assert out == data[300 * 4096:303 * 4096]
    assert os.stat(mnt.path / "blob.bin").st_size == len(data)
    assert os.stat(mnt.path / "blob.bin").st_blocks * 512 >= len(data)


def test_head_is_one_small_ranged_request(mnt: Mount, emu):
    data = os.urandom(8 * 1024 * 1024)
    (emu.home() / "big.bin").write_bytes(data)
    os.listdir(mnt.path)  # attributes come from the listing
    before = len(emu.access_entries())
    out = subprocess.run(["head", "-c", "100", str(mnt.path / "big.bin")], capture_output=True,
                         check=True).stdout
    assert out == data[:100]
    gets = media_gets(emu.access_entries(), before)
    assert len(gets) == 1
    assert gets[0]["bytes_out"] <= 256 * 1024  # never the whole 8 MiB


def test_random_reads_are_one_request_each(mnt: Mount, emu):
    data = os.urandom(16 * 1024 * 1024)
    (emu.home() / "rand.bin").write_bytes(data)
    os.listdir(mnt.path)
    rng = random.Random(7)
    offsets = [rng.randrange(0, len(data) // 4096 - 1) * 4096 for _ in range(40)]
    fd = os.open(mnt.path / "rand.bin", os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        before = len(emu.access_entries())
        for off in offsets:
            assert os.pread(fd, 4096, off) == data[off:off + 4096]
        gets = media_gets(emu.access_entries(), before)
    finally:
        os.close(fd)
    assert len(gets) <= len(set(offsets))  # the kernel may serve repeats from its page cache
    assert sum(g["bytes_out"] for g in gets) <= len(set(offsets)) * 128 * 1024


@pytest.mark.parametrize("mode", ["agave", "rfc", "ignore"])
def test_sequential_read_in_every_range_mode(emulator_factory, mount_factory, mode):
    emu = emulator_factory("--range-mode", mode)
    data = random.Random(mode).randbytes(24 * 1024 * 1024 + 17)
    (emu.home() / "seq.bin").write_bytes(data)
    m = mount_factory(emu)
    digest = hashlib.sha256((m.path / "seq.bin").read_bytes()).hexdigest()
    assert digest == hashlib.sha256(data).hexdigest()
    # a read from the middle as well
    with open(m.path / "seq.bin", "rb") as f:
        f.seek(10_000_000)
        assert f.read(3_000_000) == data[10_000_000:13_000_000]


def test_reads_and_writes_over_https_go_through_memory_and_keep_every_byte(emulator_factory, mount_factory):
    """A real gateway speaks HTTPS: its bodies are decrypted in user space, so the
    read-ahead cannot splice them and keeps its chunks as bytes (pipes.py).  Every read
    path of a plain-HTTP mount, over TLS, end to end."""
    emu = emulator_factory("--tls")
    data = random.Random("tls").randbytes(9 * 1024 * 1024 + 4321)
    (emu.home() / "seq.bin").write_bytes(data)
    m = mount_factory(emu)
    before = len(emu.access_entries())
    with open(m.path / "seq.bin", "rb", buffering=0) as f:  # sequential, in kernel-sized reads
        got = b"".join(iter(lambda: f.read(1 << 20), b""))
    assert got == data
    assert len(media_gets(emu.access_entries(), before)) == 1  # one stream, read ahead in memory
    fd = os.open(m.path / "seq.bin", os.O_RDONLY)
    try:
        for off in (7_000_001, 123, 4_194_304 - 5):  # the page cache has them all now
            assert os.pread(fd, 10_000, off) == data[off:off + 10_000]
    finally:
        os.close(fd)
    # written through the mount, stored over TLS, then read back cold by a fresh mount
    out = random.Random("tls-out").randbytes(3 * 1024 * 1024 + 99)
    (m.path / "out.bin").write_bytes(out)
    assert m.umount().returncode == 0
    assert (emu.home() / "out.bin").read_bytes() == out
    m2 = mount_factory(emu)
    assert hashlib.sha256((m2.path / "out.bin").read_bytes()).digest() == hashlib.sha256(out).digest()
    before = len(emu.access_entries())
    rng = random.Random(3)
    fd = os.open(m2.path / "seq.bin", os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        offsets = [rng.randrange(0, len(data) - 4096) for _ in range(12)]
        for off in offsets:
            assert os.pread(fd, 4096, off) == data[off:off + 4096]
    finally:
        os.close(fd)
    assert len(media_gets(emu.access_entries(), before)) <= len(offsets)


def test_find_du_stat(mnt: Mount, emu):
    for a in range(3):
        for b in range(3):
            d = emu.home() / f"t{a}" / f"u{b}"
            d.mkdir(parents=True)
            (d / "f.txt").write_bytes(b"z" * (1000 * (a + 1)))
    found = run("find", str(mnt.path), "-type", "f").stdout.split()
    assert len(found) == 9
    du = int(run("du", "-s", "--block-size=1", "--apparent-size", str(mnt.path)).stdout.split()[0])
    assert du >= 3 * (1000 + 2000 + 3000)
    st = os.stat(mnt.path / "t2" / "u1" / "f.txt")
    assert st.st_size == 3000 and st.st_uid == os.getuid()


def test_namespace_operations_and_errnos(mnt: Mount, emu):
    p = mnt.path
    run("mkdir", "-p", str(p / "x" / "y" / "z"))
    assert (emu.home() / "x" / "y" / "z").is_dir()
    (emu.home() / "x" / "file.txt").write_text("content")
    with pytest.raises(FileExistsError):
        os.mkdir(p / "x")
    with pytest.raises(OSError) as exc:
        os.rmdir(p / "x")
    assert exc.value.errno == errno.ENOTEMPTY
    with pytest.raises(FileNotFoundError):
        os.stat(p / "nope")
    with pytest.raises(NotADirectoryError):
        os.listdir(p / "x" / "file.txt")
    with pytest.raises(IsADirectoryError):
        open(p / "x", "rb")
    with pytest.raises(OSError) as exc:
        os.symlink("x", p / "link")
    assert exc.value.errno == errno.EPERM
    with pytest.raises(OSError) as exc:
        os.link(p / "x" / "file.txt", p / "hard")
    assert exc.value.errno == errno.EPERM
    with pytest.raises(OSError) as exc:
        os.open(p / ("n" * 256), os.O_CREAT | os.O_WRONLY)
    assert exc.value.errno == errno.ENAMETOOLONG
    run("mv", str(p / "x" / "file.txt"), str(p / "moved.txt"))
    assert (emu.home() / "moved.txt").read_text() == "content"
    run("mv", str(p / "x"), str(p / "x2"))
    assert (emu.home() / "x2" / "y" / "z").is_dir() and not (emu.home() / "x").exists()
    os.rmdir(p / "x2" / "y" / "z")
    run("rm", "-r", str(p / "x2"))
    assert not (emu.home() / "x2").exists()
    # chmod/chown/utime are accepted (cp -a, rsync -a, tar need them) and not sent
    os.chmod(p / "moved.txt", 0o600)
    os.utime(p / "moved.txt", (1, 1))
    os.chown(p / "moved.txt", os.getuid(), os.getgid())
    assert sorted(os.listdir(p)) == ["moved.txt"]


def test_rename_onto_existing_file(mnt: Mount, emu):
    (emu.home() / "a.txt").write_text("AAA")
    (emu.home() / "b.txt").write_text("BBB")
    os.rename(mnt.path / "a.txt", mnt.path / "b.txt")
    assert sorted(os.listdir(mnt.path)) == ["b.txt"]
    assert (mnt.path / "b.txt").read_text() == "AAA"
    assert sorted(p.name for p in emu.home().iterdir()) == ["b.txt"]
    assert (emu.home() / "b.txt").read_text() == "AAA"


def test_changes_behind_the_mount_appear_after_the_ttl(emulator_factory, mount_factory):
    emu = emulator_factory()
    m = mount_factory(emu, "--dir-ttl", "1", "--attr-ttl", "1", "--negative-ttl", "1")
    assert os.listdir(m.path) == []
    assert not (m.path / "later.txt").exists()
    (emu.home() / "later.txt").write_text("made elsewhere")
    deadline = time.monotonic() + 10
    while "later.txt" not in os.listdir(m.path):
        assert time.monotonic() < deadline, "a file created behind the mount never appeared"
        time.sleep(0.2)
    assert (m.path / "later.txt").read_text() == "made elsewhere"
    (emu.home() / "later.txt").unlink()
    while "later.txt" in os.listdir(m.path) or (m.path / "later.txt").exists():
        assert time.monotonic() < deadline + 10, "a file deleted behind the mount never disappeared"
        time.sleep(0.2)


def test_probe_names_cost_nothing(mnt: Mount, emu):
    (emu.home() / "doc.txt").write_text("x")
    os.listdir(mnt.path)
    before = len(emu.access_entries())
    for name in (".Trash", f".Trash-{os.getuid()}", ".hidden", ".directory", "desktop.ini", "autorun.inf",
                 ".DS_Store", "._doc.txt"):
        assert not (mnt.path / name).exists()
    assert emu.access_entries()[before:] == []


@pytest.mark.skipif(shutil.which("gio") is None, reason="gio (libglib2.0-bin) not installed")
def test_gio_list_and_info(mnt: Mount, emu):
    (emu.home() / "pic.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(1000))
    (emu.home() / "folder").mkdir()
    out = run("gio", "list", "-a", "standard::*", str(mnt.path)).stdout
    assert "pic.png" in out and "folder" in out
    info = run("gio", "info", "-f", str(mnt.path)).stdout
    assert "filesystem::free" in info
    info = run("gio", "info", str(mnt.path / "pic.png")).stdout
    assert "standard::size: 1008" in info


def test_read_only_mount(emulator_factory, mount_factory):
    emu = emulator_factory()
    (emu.home() / "keep.txt").write_text("keep")
    m = mount_factory(emu, "--read-only")
    assert (m.path / "keep.txt").read_text() == "keep"
    for action in (lambda: open(m.path / "new", "w"), lambda: os.mkdir(m.path / "d"),
                   lambda: os.unlink(m.path / "keep.txt"), lambda: open(m.path / "keep.txt", "a"),
                   lambda: os.rename(m.path / "keep.txt", m.path / "k2")):
        with pytest.raises(OSError) as exc:
            action()
        assert exc.value.errno == errno.EROFS
    assert (emu.home() / "keep.txt").read_text() == "keep"


def test_mount_refuses_bad_mount_points(mnt: Mount, tmp_path):
    missing = mnt.agavefs("mount", str(tmp_path / "does-not-exist"))
    assert missing.returncode != 0 and "does not exist" in missing.stderr
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    r = mnt.agavefs("mount", str(full))
    assert r.returncode != 0 and "not empty" in r.stderr
    r = mnt.agavefs("mount", str(mnt.path))
    assert r.returncode != 0 and "already a mount point" in r.stderr


def test_stale_mount_is_refused_with_advice(emu, mount_factory):
    m = mount_factory(emu)
    os.kill(m.proc.pid, 9)
    m.proc.wait()
    # auto_unmount normally clears it at once; if a stale mount remains, it must be explained
    r = m.agavefs("mount", str(m.path))
    if r.returncode != 0:
        assert "fusermount3 -uz" in r.stderr or "already a mount point" in r.stderr
    else:
        assert is_live_mount(str(m.path))
        m.agavefs("umount", str(m.path))


def test_the_daemon_finds_its_mount_in_the_mount_table_not_by_stat(emu, mount_factory, tmp_path):
    """Found by a clean-clone CI run: the stale-mount test SIGKILLed the daemon while its
    main thread was in a stat() of its own mount point (to find the device whose kernel
    read-ahead it raises): the FUSE threads died, that stat waited for an answer no one
    could give, and the process could never exit (state D; pytest hung on its wait).
    The daemon now reads the device from /proc/self/mountinfo, and never asks its own
    mount."""
    from agavefs.daemon import _mounted_dev

    m = mount_factory(emu)
    st = os.stat(m.path)  # (the test may ask the mount; the daemon must not)
    assert _mounted_dev(str(m.path)) == f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    assert _mounted_dev(str(tmp_path)) is None
    table = tmp_path / "mountinfo"
    table.write_text(
        "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
        "42 22 0:39 / /tmp/my\\040mounts/a\\134b rw - fuse.agavefs agavefs rw\n"
        "43 42 0:41 / /tmp/my\\040mounts/a\\134b rw - fuse.agavefs agavefs rw\n")
    assert _mounted_dev("/tmp/my mounts/a\\b", str(table)) == "0:41"  # the one on top
    assert _mounted_dev("/tmp/my mounts", str(table)) is None


def test_background_mount_and_umount(emu, mount_factory, tmp_path):
    m = mount_factory(emu, start=False)
    m.mountpoint.mkdir()
    r = m.agavefs("mount", str(m.mountpoint), "--cache-dir", str(m.cache_dir))
    assert r.returncode == 0, r.stderr
    assert is_live_mount(str(m.mountpoint))
    (m.mountpoint / "bg.txt").write_text("background")
    r = m.agavefs("umount", str(m.mountpoint))
    assert r.returncode == 0, r.stderr
    assert not os.path.ismount(m.mountpoint)
    assert (emu.home() / "bg.txt").read_text() == "background"


@pytest.mark.parametrize("tool", ["cat", "tar", "grep"])
def test_readers_of_many_small_files_get_them_fetched_ahead_once(emulator_factory, mount_factory, tool):
    """cat of a glob, tar c and grep -r over 60 small files on a 20 ms server: the files
    after the first two are fetched ahead, several at once (sibling prefetch); each is
    still fetched exactly once, and every byte is the server's."""
    import tarfile

    emu = emulator_factory("--latency", "20", "--staging-delay", "0")
    src = emu.home() / "many"
    src.mkdir()
    content = {f"f{i:03d}.txt": os.urandom(3000) + f"line {i}\n".encode() for i in range(60)}
    for name, data in content.items():
        (src / name).write_bytes(data)
    m = mount_factory(emu)
    os.listdir(m.path / "many")
    before = len(emu.access_entries())
    if tool == "cat":
        out = subprocess.run(["sh", "-c", "cat many/*.txt"], cwd=m.path, capture_output=True, timeout=300)
        assert out.returncode == 0 and out.stdout == b"".join(content[n] for n in sorted(content))
    elif tool == "tar":
        run("tar", "cf", str(m.base / "many.tar"), "-C", str(m.path), "many")
        with tarfile.open(m.base / "many.tar") as t:
            got = {os.path.basename(i.name): t.extractfile(i).read() for i in t.getmembers() if i.isfile()}
        assert got == content
    else:
        out = run("grep", "-r", "-a", "-c", "line ", str(m.path / "many")).stdout.split()
        assert len(out) == len(content) and all(line.endswith(":1") for line in out)
    gets = [e["path"] for e in media_gets(emu.access_entries(), before)]
    assert sorted(gets) == sorted(set(gets)) and len(gets) == len(content), gets
    status = json.loads(m.agavefs("status", "--json", str(m.path)).stdout)
    ahead = status["mounts"][0]["ahead"]
    assert ahead["files_used"] >= len(content) // 2, ahead


def test_find_lists_ahead_and_each_directory_once(emulator_factory, mount_factory):
    """find over 5x5x3 directories on a 20 ms server: walk-ahead lists the directories
    find enters next in parallel; each is still listed exactly once (a page at
    offset 0 per directory; later requests at other offsets are only page probes)."""
    emu = emulator_factory("--latency", "20", "--staging-delay", "0")
    dirs = []
    for a in range(5):
        for b in range(5):
            for c in range(3):
                d = emu.home() / "w" / f"a{a}" / f"b{b}" / f"c{c}"
                d.mkdir(parents=True)
                (d / "f").write_bytes(b"x")
                dirs.append(d)
    m = mount_factory(emu)
    before = len(emu.access_entries())
    t0 = time.monotonic()
    found = run("find", str(m.path / "w"), "-type", "f").stdout.split()
    took = time.monotonic() - t0
    assert len(found) == len(dirs)
    firsts = [e["path"] for e in listings(emu.access_entries(), before) if "offset=0&" in e["query"]
              and "limit=1" not in e["query"].split("&")]
    n_dirs = 1 + 5 + 25 + 75
    assert len(firsts) == len(set(firsts)) == n_dirs, sorted(firsts)
    # one listing after another: 106 x 20 ms at least; ahead, several at once
    assert took < n_dirs * 0.020, took


def test_a_later_mount_lists_equal_small_directories_without_probes(emu, mount_factory, tmp_path):
    """Directories of equal length cost a fresh client a probe each (paging.py: such a page
    may be the server's cap).  The longest page a mount saw is kept for the next mount
    (known_servers.py, 0600, no address in clear), which checks it once and then lists each
    directory with exactly one request."""
    for a in range(4):
        for b in range(4):
            d = emu.home() / "w" / f"a{a}" / f"b{b}"
            d.mkdir(parents=True)
            (d / "f").write_bytes(b"x")
    (emu.home() / "big").mkdir()
    for i in range(40):
        (emu.home() / "big" / f"n{i:02d}").write_bytes(b"y")
    n_dirs = 1 + 4 + 16

    def find_lists(m):
        before = len(emu.access_entries())
        found = run("find", str(m.path / "w"), "-type", "f").stdout.split()
        assert len(found) == 16
        return [(e["path"].split("/home/demo/", 1)[1], q) for e in listings(emu.settled_entries(), before)
                if not (q := paging(e["query"])).endswith("&limit=1")]  # lookups (stat) are not listings

    first = mount_factory(emu)
    first_find = find_lists(first)
    assert len(os.listdir(first.path / "big")) == 40
    assert first.umount().returncode == 0
    assert len(first_find) == n_dirs + 5  # the root and the a* each: one probe
    record = tmp_path / "xdg-cache" / "agavefs" / "servers.json"
    assert stat_mode(record) == 0o600
    text = record.read_text()
    assert "127.0.0.1" not in text and "localhost" not in text and '"length": 41' in text

    mounted = len(emu.settled_entries())
    later = mount_factory(emu)
    sent = find_lists(later)
    tree = [(p, q) for p, q in sent if p.startswith("w")]
    assert len(tree) == len({p for p, _ in tree}) == n_dirs, sorted(tree)
    assert all(q.startswith("offset=0&") for _, q in tree)
    assert len(sent) == n_dirs  # one request per directory (w's: its lookup, which listed it)
    # the one check of the record: at the first lookup of a folder whose page it settles
    # (the root's, as the mount came up: its 3 entries may have been a cap of 3)
    checks = [paging(e["query"]) for e in listings(emu.settled_entries(), mounted)
              if e["path"].endswith("/home/demo/big")]
    assert checks == ["offset=0&limit=41"]


def stat_mode(path):
    return os.stat(path).st_mode & 0o777


def test_opening_a_file_in_a_fresh_mount_costs_one_lookup_and_the_read(emu, mount_factory):
    """Time to first byte: the mount's root was looked up when it came up, and that stat
    brought the root's entries along (limit=100), so `sub` costs nothing; `sub/f` is one
    stat, then one GET."""
    (emu.home() / "sub").mkdir()
    (emu.home() / "sub" / "f").write_bytes(b"0123456789" * 1000)
    (emu.home() / "sub" / "inner").mkdir()
    (emu.home() / "sub" / "inner" / "g").write_bytes(b"g")
    m = mount_factory(emu)
    assert (m.path).is_dir()
    before = len(emu.settled_entries())
    with open(m.path / "sub" / "f", "rb") as fh:
        assert fh.read(4096) == (b"0123456789" * 1000)[:4096]
    sent = [(e["method"], e["path"].split("/home/demo", 1)[1], e["query"]) for e in emu.settled_entries()[before:]]
    assert [(m_, p) for m_, p, _ in sent] == [("GET", "/sub/f"), ("GET", "/sub/f")], sent
    assert paging(sent[0][2]) == "offset=0&limit=100" and "/files/v2/listings/" in emu.access_entries()[before]["path"]
    # the stat of a directory brings its entries: `g` needs no request of its own
    again = len(emu.settled_entries())
    assert os.stat(m.path / "sub" / "inner").st_nlink == 2
    assert os.stat(m.path / "sub" / "inner" / "g").st_size == 1
    sent = emu.settled_entries()[again:]
    assert [(e["path"].split("/home/demo", 1)[1], paging(e["query"])) for e in sent] == \
        [("/sub/inner", "offset=0&limit=100")]



MALLOC_PROBE = """
import os, sys, threading
from agavefs import daemon
if sys.argv[1] == "tuned":
    assert daemon._tune_malloc()
def faults():
    return int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[7])
res = {}
def work():  # what a read-ahead thread does: 1 MiB chunks held in a window, then freed
    for r in range(6):
        if r == 1:
            res["start"] = faults()
        held = [os.urandom(1) * (1 << 20) for _ in range(48)]
        del held
    res["end"] = faults()
t = threading.Thread(target=work)
t.start()
t.join()
print((res["end"] - res["start"]) * os.sysconf("SC_PAGE_SIZE") >> 20)
"""


def _malloc_probe(code: str, policy: str, tmp_path) -> int:
    """Run a probe script ("tuned": after daemon._tune_malloc; "plain": glibc's
    defaults) in a fresh interpreter; the number it prints."""
    script = tmp_path / "probe.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script), policy], capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


@pytest.mark.parametrize("policy", ["tuned", "plain"])
def test_the_daemons_allocator_keeps_freed_chunks_for_reuse(policy, tmp_path):
    """daemon._tune_malloc (called first thing by run_daemon): a thread that allocates
    and frees windows of 1 MiB chunks, as the read-ahead does, gets the same memory back
    instead of fresh pages from the kernel (glibc's defaults hand 48 MiB back and fault
    it in again every round)."""
    faulted_mib = _malloc_probe(MALLOC_PROBE, policy, tmp_path)
    if policy == "tuned":
        assert faulted_mib < 8
    else:  # the probe itself can tell the two apart (else the test above proves nothing)
        assert faulted_mib > 5 * 48 / 2


ARENA_PROBE = """
import ctypes, sys, tempfile, threading
from agavefs import daemon
if sys.argv[1] == "tuned":
    assert daemon._tune_malloc()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
start = threading.Barrier(12)
def work():  # a new thread's first malloc gets an arena of its own while glibc allows more
    start.wait()
    for _ in range(200):
        libc.free(libc.malloc(300_000 // 8))
threads = [threading.Thread(target=work) for _ in range(12)]
for t in threads:
    t.start()
for t in threads:
    t.join()
with tempfile.NamedTemporaryFile() as out:
    fp = libc.fopen(out.name.encode(), b"w")
    libc.malloc_info(0, fp)
    libc.fclose(fp)
    print(open(out.name).read().count("<heap nr="))
"""


@pytest.mark.parametrize("policy", ["tuned", "plain"])
def test_the_daemons_threads_share_two_malloc_arenas(policy, tmp_path):
    """daemon._tune_malloc caps glibc's arenas (each keeps what was freed in it: many of
    them spread a walk's peak memory): twelve threads that allocate at once use at most
    MALLOC_ARENAS of them."""
    from agavefs.daemon import MALLOC_ARENAS
    heaps = _malloc_probe(ARENA_PROBE, policy, tmp_path)
    if policy == "tuned":
        assert 1 <= heaps <= MALLOC_ARENAS
    else:  # glibc's default: the probe tells the two apart
        assert heaps > MALLOC_ARENAS


def test_a_mount_tunes_its_allocator(mnt: Mount):
    assert "allocator: mmap threshold 4 MiB, trim threshold 64 MiB, 2 arenas" in mnt.log_text()


def test_fuse_threads_keep_their_python_state_across_callbacks(emu, mount_factory):
    """Each libfuse worker keeps one Python thread state for its life (fuse_ops.py), not
    a new one per callback: bursts of parallel walks (thousands of callbacks) pin at
    most max_threads (16) threads.  A pin that did not hold would pin the same threads
    again at every callback, up to PINNED_MAX (64)."""
    for d in range(6):
        for e in range(6):
            (emu.home() / "pin" / f"d{d}" / f"e{e}").mkdir(parents=True)
            (emu.home() / "pin" / f"d{d}" / f"e{e}" / "f").write_bytes(b"x")
    m = mount_factory(emu)

    def pinned() -> int:
        return json.loads(m.agavefs("status", "--json", str(m.path)).stdout)["mounts"][0]["fuse_threads"]

    counts = []
    for _ in range(4):
        walkers = [subprocess.Popen(["find", str(m.path / "pin")], stdout=subprocess.DEVNULL) for _ in range(8)]
        for w in walkers:
            assert w.wait(120) == 0
        for _ in range(200):
            os.stat(m.path / "pin" / "d0" / "e0" / "f")
        counts.append(pinned())
    assert all(1 <= c <= 16 for c in counts), counts
