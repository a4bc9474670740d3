"""Fixtures shared by every test module (see helpers.py for the emulator process)."""

from __future__ import annotations

import pytest

from helpers import Emulator


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
