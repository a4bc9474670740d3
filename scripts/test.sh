#!/bin/sh
# Set everything up (scripts/setup.sh) and run the whole test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k emulator -x
set -eu
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
