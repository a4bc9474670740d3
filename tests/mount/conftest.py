"""Fixtures for real mounts (the machinery is in ``tests/mountsupport.py``)."""

from __future__ import annotations

import pytest

from mountsupport import HAVE_FUSE, Mount, fusermount, is_live_mount, is_stale, login  # noqa: F401

pytestmark = pytest.mark.skipif(not HAVE_FUSE, reason="needs /dev/fuse and fusermount3 (apt install fuse3)")


@pytest.fixture
def mount_factory(tmp_path, emulator_factory):
    mounts: list[Mount] = []

    def make(emu=None, *args: str, start: bool = True, **kw) -> Mount:
        emu = emu or emulator_factory()
        m = Mount(emu, tmp_path, *args, name=kw.pop("name", f"mnt{len(mounts)}"), **kw)
        mounts.append(m)
        return m.start() if start else m

    yield make
    for m in mounts:
        m.cleanup()


@pytest.fixture
def emu(emulator_factory):
    return emulator_factory()


@pytest.fixture
def mnt(mount_factory, emu) -> Mount:
    """A live mount of the demo user's home on a default emulator."""
    return mount_factory(emu)
