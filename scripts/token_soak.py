#!/usr/bin/env python3
"""The long token-expiry soak of issue 8: ``scripts/soak.py`` with only the
``token-ttl`` fault (the emulator issues 3-second tokens; the mount must refresh
them all the time) for 5 minutes: no EACCES, no failed operation, every byte checked.

Usage: python scripts/token_soak.py [--minutes 5] [any other soak.py option]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import soak  # noqa: E402


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--minutes" not in argv:
        argv = ["--minutes", "5", *argv]
    # one phase for the whole run: the server is never restarted, only tokens expire
    return soak.main(["--faults", "token-ttl", "--phase-seconds", "100000", *argv])


if __name__ == "__main__":
    sys.exit(main())
