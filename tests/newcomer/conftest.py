"""Fixtures of the newcomer tests: the real-mount fixtures of tests/mount (``emu``,
``mnt``, ``mount_factory``), re-exported, and a private runtime directory so that
the registrations of the test's mounts are its own."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from newcomer_support import fixtures

mount_factory = fixtures.mount_factory
emu = fixtures.emu
mnt = fixtures.mnt


@pytest.fixture(autouse=True)
def private_runtime_dir(monkeypatch):
    """XDG_RUNTIME_DIR of our own (short: Unix socket paths are limited to 108 bytes)."""
    path = tempfile.mkdtemp(prefix="afs-run-")
    os.chmod(path, 0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", path)
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)
