"""Fixtures of the emulator's tests (the process itself comes from tests/conftest.py)."""

from __future__ import annotations

import pytest

from emu_client import Api
from helpers import Emulator


@pytest.fixture
def api(emulator) -> Api:
    """demo's logged-in session on a fresh default emulator."""
    return Api(emulator)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One emulator (demo, bob; staging delay 0.2 s) shared by a module's read-mostly tests.
    Tests using it work in their own sub-directory."""
    root = tmp_path_factory.mktemp("shared")
    emu = Emulator(root / "root", "--staging-delay", "0.2", users=(("demo", "demo"), ("bob", "bobpw")),
                   log_dir=root)
    emu.start()
    yield emu
    emu.stop()
    emu.kill()
    assert _server_errors(root) == []


@pytest.fixture(scope="module")
def sapi(shared) -> Api:
    return Api(shared)


def _server_errors(directory) -> list[str]:
    bad = []
    for log in directory.glob("emulator-*.stderr"):
        for line in log.read_text(errors="replace").splitlines():
            if "Traceback" in line or " ERROR " in line or " CRITICAL " in line:
                bad.append(f"{log.name}: {line}")
    return bad


@pytest.fixture(autouse=True)
def no_server_errors(tmp_path):
    """Whatever a test sends, the server must not log an internal error (500s log tracebacks)."""
    yield
    assert _server_errors(tmp_path) == []
