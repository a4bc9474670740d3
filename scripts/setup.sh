#!/bin/sh
# Set up agavefs on a Debian machine: system packages (installed with apt when run
# as root, otherwise listed for you to install), a virtual environment in .venv and
# the package with its test extras. Safe to run again; it only does what is missing.
set -eu
cd "$(dirname "$0")/.."

# fuse3/libfuse3-3: the mount; python3-venv: .venv; rsync, git, libglib2.0-bin (gio),
# attr, procps, openssl, ca-certificates: tools the tests drive through the mount.
PKGS="fuse3 libfuse3-3 python3 python3-venv python3-pip rsync git libglib2.0-bin attr procps ca-certificates"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing system packages:$missing"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    else
        echo "setup: please install these Debian packages first (as root):" >&2
        echo "    apt-get install -y$missing" >&2
        exit 1
    fi
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
