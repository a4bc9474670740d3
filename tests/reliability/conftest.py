"""Fixtures of the reliability and security tests (issue 8).

They reuse the real-mount machinery of ``tests/mount/conftest.py`` (emulator
subprocesses from ``tests/conftest.py``, ``Mount``, ``mount_factory``, ``emu``,
``mnt``): that file is loaded here under a module name of its own, so that its
fixtures are registered for this directory without touching the mount tests.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_MOUNT_CONFTEST = _HERE.parent / "mount" / "conftest.py"
for extra in (_HERE, _HERE.parent):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))


def _load_mount_support():
    name = "agavefs_tests_mount_support"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _MOUNT_CONFTEST)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_support = _load_mount_support()

# fixtures (pytest collects them from this module's namespace) and helpers
mount_factory = _support.mount_factory
emu = _support.emu
mnt = _support.mnt
Mount = _support.Mount
HAVE_FUSE = _support.HAVE_FUSE
is_live_mount = _support.is_live_mount
is_stale = _support.is_stale
login = _support.login
fusermount = _support.fusermount


def pytest_terminal_summary(terminalreporter):
    from relsupport import FIGURES
    if FIGURES:
        terminalreporter.write_sep("-", "reliability figures")
        for key in sorted(FIGURES):
            terminalreporter.write_line(f"{key}: {FIGURES[key]}")
