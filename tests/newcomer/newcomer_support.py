"""Shared by the newcomer tests (a module of its own name: tests/mount and this folder
both have a conftest.py, so ``from conftest import`` is ambiguous).

Loads tests/mount/conftest.py by path as ``agavefs_mount_fixtures`` (its fixtures are
re-exported by this folder's conftest.py) and holds small helpers.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
REPO = TESTS.parent

if "agavefs_mount_fixtures" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("agavefs_mount_fixtures", TESTS / "mount" / "conftest.py")
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["agavefs_mount_fixtures"] = _module
    _spec.loader.exec_module(_module)
fixtures = sys.modules["agavefs_mount_fixtures"]

HAVE_FUSE = fixtures.HAVE_FUSE
Mount = fixtures.Mount
is_live_mount = fixtures.is_live_mount
is_stale = fixtures.is_stale
login = fixtures.login


def agavefs(*args: str, env: dict | None = None, input: str | None = None, timeout: float = 120,
            **kw) -> subprocess.CompletedProcess:
    """``python -m agavefs ARGS`` of the interpreter under test."""
    return subprocess.run([sys.executable, "-m", "agavefs", *args], env=env, input=input, capture_output=True,
                          text=True, timeout=timeout, **kw)


def no_traceback(r: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in (r.stdout or "") + (r.stderr or ""), r.stderr


def env_with(**changes) -> dict:
    env = dict(os.environ)
    for k, v in changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env
