"""Bad input through the mount: awkward names either round-trip exactly (the backing
file has exactly that name and those bytes, in both directions) or are refused with a
clear errno, and never reach a different file."""

from __future__ import annotations

import errno
import os

import pytest

from relsupport import count, no_hidden

GOOD = [
    "with space.txt", " leading and trailing space ", "hash#frag.txt", "pct%41.txt", "pct%.txt", "pct%2F.txt",
    "pct%2e%2e", "q?x=1.txt", "plus+sign.txt", "amp&amp.txt", "quote'single.txt", 'quote"double.txt',
    "new\nline.txt", "cr\rreturn", "tab\tname", "-leading-dash", "--", "-rf", "back\\slash", "semi;colon",
    "star*glob[1]", "curly{a,b}", "dollar$HOME", "tilde~", "colon:name", "at@sign", "comma,name", "equals=",
    "ünïcödé ☃.txt", "日本語のファイル", "emoji 🎉.bin", "zero\u200bwidth", "rtl\u202eevil.txt",
    "a" * 255, "é" * 127 + "a", "...", "..dots", ".hidden", "CASE.txt",
]
# the names a broken encoder would produce instead: they must never be touched
DECOYS = ["with", "with%20space.txt", "hash", "pctA.txt", "pct", "pct.txt", "..", "q", "plus sign.txt",
          "amp", "quote", "new", "cr", "-leading-dash.bak", "back", "slash", "semi", "case.txt", "日本語"]


def _content(name: str) -> bytes:
    return ("content of " + repr(name)).encode()


def test_awkward_names_round_trip_exactly(mnt, emu):
    home = emu.home()
    # server -> mount: files made on the server with the same names (before any listing)
    (home / "from-server").mkdir()
    for name in GOOD:
        (home / "from-server" / name).write_bytes(_content(name) + b" (server)")
    decoys = {}
    for d in DECOYS:
        if d in ("..",):
            continue
        (home / d).write_bytes(b"decoy " + d.encode())
        decoys[d] = b"decoy " + d.encode()
    # mount -> server
    for name in GOOD:
        (mnt.path / name).write_bytes(_content(name))
    listed = set(os.listdir(mnt.path))
    for name in GOOD:
        assert name in listed, name
        assert (mnt.path / name).read_bytes() == _content(name), name
    assert sorted(os.listdir(mnt.path / "from-server")) == sorted(GOOD)
    for name in GOOD:
        assert (mnt.path / "from-server" / name).read_bytes() == _content(name) + b" (server)", name
    # renames keep names exactly too
    os.rename(mnt.path / "q?x=1.txt", mnt.path / "renamed #%?&+.txt")
    r = mnt.umount()
    assert r.returncode == 0, r.stderr + mnt.log_tail()
    on_server = {p.name for p in home.iterdir()}
    for name in GOOD:
        if name == "q?x=1.txt":
            assert name not in on_server
            assert (home / "renamed #%?&+.txt").read_bytes() == _content(name)
            continue
        assert name in on_server, name
        assert (home / name).read_bytes() == _content(name), name
    for d, data in decoys.items():
        assert (home / d).read_bytes() == data, f"decoy {d!r} was touched"
    expected = set(GOOD) - {"q?x=1.txt"} | {"renamed #%?&+.txt", "from-server"} | set(decoys)
    assert on_server == expected, on_server ^ expected
    assert not no_hidden(home)
    count(files_verified=2 * len(GOOD), bytes_compared=sum(2 * len(_content(n)) + 9 for n in GOOD))


def _errno_of(fn, *args) -> int | None:
    try:
        fn(*args)
    except OSError as exc:
        return exc.errno
    return None


def test_names_that_are_refused_with_a_clear_errno(mnt, emu):
    base = os.fsencode(str(mnt.path))
    before = sorted(os.listdir(emu.home()))
    # not UTF-8: Agave paths are UTF-8 (EINVAL), whatever the call
    bad = base + b"/bad\xffname.txt"
    assert _errno_of(lambda: open(bad, "wb").close()) == errno.EINVAL
    assert _errno_of(os.mkdir, base + b"/dir\xfe") == errno.EINVAL
    assert _errno_of(os.stat, bad) == errno.EINVAL
    (mnt.path / "fine.txt").write_bytes(b"fine")
    assert _errno_of(os.rename, base + b"/fine.txt", base + b"/\xc3\x28.txt") == errno.EINVAL
    # 256 bytes: ENAMETOOLONG (the kernel's limit is ours: f_namemax 255)
    assert _errno_of(lambda: open(mnt.path / ("b" * 256), "wb").close()) == errno.ENAMETOOLONG
    assert _errno_of(lambda: open(mnt.path / ("é" * 128), "wb").close()) == errno.ENAMETOOLONG
    assert _errno_of(os.mkdir, mnt.path / ("c" * 300)) == errno.ENAMETOOLONG
    assert os.statvfs(mnt.path).f_namemax == 255
    # names a file can never have
    assert _errno_of(os.mkdir, mnt.path / ".") == errno.EEXIST
    assert _errno_of(lambda: open(os.path.join(str(mnt.path), "x/"), "wb").close()) in (errno.EISDIR, errno.ENOENT)
    # the mount's own temporary names are not for users (stored, such a file would vanish)
    assert _errno_of(lambda: open(mnt.path / ".agavefs~1234", "wb").close()) == errno.EINVAL
    assert _errno_of(os.mkdir, mnt.path / ".agavefs~dir") == errno.EINVAL
    assert _errno_of(os.rename, mnt.path / "fine.txt", mnt.path / ".agavefs~0123456789abcdef") == errno.EINVAL
    r = mnt.umount()
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(emu.home())) == sorted(before + ["fine.txt"])


def test_non_utf8_names_on_the_server_never_alias(emu, mount_factory):
    home = os.fsencode(str(emu.home()))
    with open(home + b"/latin1-\xe9t\xe9.txt", "wb") as f:
        f.write(b"latin-1 bytes")
    (emu.home() / "latin1-\ufffdt\ufffd.txt").write_bytes(b"a different file")
    m = mount_factory(emu)
    names = os.listdir(m.path)  # the listing works (the emulator once answered 500 here)
    assert sorted(names) == ["latin1-\ufffdt\ufffd.txt"]  # the undecodable name is not listed
    assert (m.path / "latin1-\ufffdt\ufffd.txt").read_bytes() == b"a different file"
    with pytest.raises(OSError) as exc:
        os.stat(os.fsencode(str(m.path)) + b"/latin1-\xe9t\xe9.txt")
    assert exc.value.errno == errno.EINVAL


def test_very_deep_paths(mnt, emu):
    parts = [f"level{i:02d}-" + "x" * 40 for i in range(60)]  # ~3 KiB of path, under PATH_MAX
    deep = mnt.path.joinpath(*parts)
    os.makedirs(deep)
    (deep / "bottom.txt").write_bytes(b"deep down")
    assert (deep / "bottom.txt").read_bytes() == b"deep down"
    too_deep = deep.joinpath(*[f"more{i}-" + "y" * 200 for i in range(6)])
    with pytest.raises(OSError) as exc:
        os.makedirs(too_deep)
    assert exc.value.errno == errno.ENAMETOOLONG
    r = mnt.umount()
    assert r.returncode == 0, r.stderr
    assert emu.home().joinpath(*parts, "bottom.txt").read_bytes() == b"deep down"
    count(files_verified=1, bytes_compared=9)
