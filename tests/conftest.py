"""Fixtures shared by every test module (see helpers.py for the emulator process)."""

from __future__ import annotations

import pytest

from helpers import Emulator
from agavefs.vfs.core import VFS
from agavefs.vfs.options import Options


@pytest.fixture(autouse=True)
def _own_cache_home(tmp_path, monkeypatch):
    """Each test its own XDG_CACHE_HOME (inherited by the mounts it starts): what a mount
    keeps about its server for the next one (known_servers) never leaks between tests."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture
def emulator_factory(tmp_path):
    """Start emulators with chosen options; every one is stopped at teardown."""
    started: list[Emulator] = []

    def make(*args: str, users=(("demo", "demo"),), root=None, start=True) -> Emulator:
        emu = Emulator(root or tmp_path / f"root{len(started)}", *args, users=users, log_dir=tmp_path)
        started.append(emu)
        return emu.start() if start else emu

    yield make
    for emu in started:
        emu.stop()
        emu.kill()


@pytest.fixture
def emulator(emulator_factory) -> Emulator:
    """A default emulator (user demo:demo, staging delay 0.5 s) on a free loopback port."""
    return emulator_factory()


@pytest.fixture
def make_vfs(tmp_path):
    """``make_vfs(backend, **options)``: a VFS (no FUSE) over ``backend`` with its spool
    in tmp_path; every one made is closed, waiting for its workers, at teardown."""
    made = []

    def make(backend, **kw):
        kw.setdefault("cache_dir", str(tmp_path / "spool"))
        opts = Options(**kw)
        vfs = VFS(backend, opts, opts.cache_dir)
        made.append(vfs)
        return vfs

    yield make
    for vfs in made:
        vfs.close(wait=True)
