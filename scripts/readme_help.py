#!/usr/bin/env python3
"""Refresh the `agavefs COMMAND --help` blocks of README.md from the code.

README.md marks each block with ``<!-- help:COMMAND -->`` ... ``<!-- /help:COMMAND -->``;
this script replaces what is between the markers with the command's current help
(80 columns).  tests/newcomer/test_readme.py checks that every option, with its
default, is in README.md, so run this after changing an option:

    .venv/bin/python scripts/readme_help.py          # rewrite README.md
    .venv/bin/python scripts/readme_help.py --check  # exit 1 when it is out of date
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"


def help_text(command: str) -> str:
    os.environ["COLUMNS"] = "80"
    sys.path.insert(0, str(REPO))
    from agavefs.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main([command, "--help"])
        except SystemExit:
            pass
    text = out.getvalue().rstrip()
    # defaults that depend on the machine
    import socket
    text = text.replace(f"agavefs-{socket.gethostname()}", "agavefs-HOSTNAME")
    return text


def render(text: str) -> str:
    def block(m: re.Match) -> str:
        command = m.group(1)
        return (f"<!-- help:{command} -->\n```text\n$ agavefs {command} --help\n{help_text(command)}\n```\n"
                f"<!-- /help:{command} -->")

    return re.sub(r"<!-- help:(\w+) -->.*?<!-- /help:\1 -->", block, text, flags=re.S)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only check; exit 1 when README.md is out of date")
    args = ap.parse_args()
    old = README.read_text()
    new = render(old)
    if args.check:
        if new != old:
            print("README.md: the --help blocks are out of date; run scripts/readme_help.py", file=sys.stderr)
            return 1
        return 0
    if new != old:
        README.write_text(new)
        print("README.md updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
