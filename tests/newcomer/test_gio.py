"""Issue 6: desktop file managers, through GIO (what Nautilus, Thunar and pcmanfm use):
listing, opening, copying in and out, renaming and moving work, free space shows, and
``gio trash`` fails cleanly: GLib looks for ``$topdir/.Trash`` (a sticky directory we
never have) and then creates ``$topdir/.Trash-$UID``; the mount refuses that mkdir, so
nothing is uploaded, the file is untouched and the desktop offers permanent deletion."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from newcomer_support import HAVE_FUSE

pytestmark = [
    pytest.mark.skipif(not HAVE_FUSE, reason="needs /dev/fuse and fusermount3 (apt install fuse3)"),
    pytest.mark.skipif(shutil.which("gio") is None, reason="needs gio (apt install libglib2.0-bin)"),
]


def gio(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, GIO_USE_VFS="local", LC_ALL="C.UTF-8")
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    return subprocess.run(["gio", *args], capture_output=True, text=True, timeout=60, env=env, cwd=cwd)


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, f"{r.args}: {r.stderr}"
    return r


def trash_dirs(root: Path) -> list[str]:
    return [os.path.join(d, n) for d, dirs, files in os.walk(root) for n in dirs + files if n.startswith(".Trash")]


def test_gio_list_open_copy_rename_move_free_space(mnt, emu, tmp_path):
    (emu.home() / "docs").mkdir()
    (emu.home() / "docs" / "report.txt").write_text("quarterly numbers\n")
    local = tmp_path / "local.bin"
    local.write_bytes(os.urandom(700_000))
    uri = mnt.path.as_uri()

    assert ok(gio("list", uri)).stdout.split() == ["docs"]
    assert ok(gio("cat", f"{uri}/docs/report.txt")).stdout == "quarterly numbers\n"
    # copy in, copy out
    ok(gio("copy", str(local), f"{uri}/docs/local.bin"))
    ok(gio("copy", f"{uri}/docs/local.bin", str(tmp_path / "back.bin")))
    assert (tmp_path / "back.bin").read_bytes() == local.read_bytes()
    # rename (a desktop's F2) and move into a new folder
    ok(gio("rename", f"{uri}/docs/report.txt", "report-2024.txt"))
    ok(gio("mkdir", f"{uri}/archive"))
    ok(gio("move", f"{uri}/docs/report-2024.txt", f"{uri}/archive/"))
    names = ok(gio("list", "-a", "standard::size", f"{uri}/archive")).stdout
    assert "report-2024.txt" in names
    assert sorted(os.listdir(mnt.path / "docs")) == ["local.bin"]
    # free space shows (desktops refuse to copy onto a filesystem with 0 free)
    info = ok(gio("info", "-f", uri)).stdout
    free = [int(line.rsplit(":", 1)[1]) for line in info.splitlines() if "filesystem::free:" in line]
    assert free and free[0] > 0, info

    r = mnt.umount()
    assert r.returncode == 0, r.stderr
    assert (emu.home() / "archive" / "report-2024.txt").read_text() == "quarterly numbers\n"
    assert (emu.home() / "docs" / "local.bin").read_bytes() == local.read_bytes()
    assert not (emu.home() / "docs" / "report.txt").exists()


def test_gio_trash_fails_cleanly(mnt, emu):
    """The VFS refuses mkdir of ``.Trash``/``.Trash-*`` at the mount root (EPERM), so
    GLib cannot make a trash can: it fails with "Unable to find or create trash
    directory" and leaves the file alone."""
    (emu.home() / "keep.txt").write_text("do not lose me\n")
    (emu.home() / "sub").mkdir()
    (emu.home() / "sub" / "nested.txt").write_text("nested\n")
    for target in ("keep.txt", "sub/nested.txt"):
        r = gio("trash", str(mnt.path / target))
        assert r.returncode != 0, f"gio trash {target} succeeded: {r.stdout}"
        assert "trash" in r.stderr.lower() and "Traceback" not in r.stderr, r.stderr
        assert (mnt.path / target).exists()  # untouched
    assert (mnt.path / "keep.txt").read_text() == "do not lose me\n"
    # no trash can anywhere: not through the mount, not on the server
    assert not trash_dirs(mnt.path)
    with pytest.raises(PermissionError):
        os.mkdir(mnt.path / f".Trash-{os.getuid()}")
    with pytest.raises(PermissionError):
        os.mkdir(mnt.path / ".Trash")
    os.mkdir(mnt.path / "sub" / ".Trash-keep-allowed-below-the-root")  # only the mount root is special
    r = mnt.umount()
    assert r.returncode == 0, r.stderr
    assert [p for p in trash_dirs(emu.home()) if not p.endswith("allowed-below-the-root")] == []
    assert not [e for e in emu.access_entries() if ".Trash-" in e["path"] and "allowed" not in e["path"]
                and e["method"] != "GET"]
    assert (emu.home() / "keep.txt").read_text() == "do not lose me\n"
    assert (emu.home() / "sub" / "nested.txt").read_text() == "nested\n"
