#!/bin/sh
# Set up agavefs on a Debian machine: system packages (installed with apt when run
# as root, otherwise listed for you to install), a virtual environment in .venv and
# the package with its test extras. Safe to run again; it only does what is missing.
set -eu
cd "$(dirname "$0")/.."

# Needed to run agavefs: fuse3/libfuse3-3 (the mount), python3-venv (.venv).
REQUIRED="fuse3 libfuse3-3 python3 python3-venv python3-pip ca-certificates"
# Needed by the tests, which drive real tools through the mount: rsync, git, gio
# (libglib2.0-bin), attr, procps; xvfb, pcmanfm, imagemagick, x11-utils for the
# desktop screenshot (scripts/screenshot.py).
FOR_TESTS="rsync git libglib2.0-bin attr procps xvfb pcmanfm imagemagick x11-utils"

missing() {
    out=""
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || out="$out $p"
    done
    echo "$out"
}
need=$(missing $REQUIRED)
want=$(missing $FOR_TESTS)
if [ -n "$need$want" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing system packages:$need$want"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need $want >/dev/null
elif [ -n "$need" ]; then
    echo "setup: please install these Debian packages first (as root):" >&2
    echo "    apt-get install -y$need" >&2
    exit 1
elif [ -n "$want" ]; then
    echo "setup: the tests also need:$want (apt-get install -y$want, as root)" >&2
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($PY --version 2>&1)"
    "$PY" -m venv .venv
fi
stamp=.venv/.agavefs-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing agavefs and its test dependencies into .venv"
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e ".[test]"
    touch "$stamp"
fi
