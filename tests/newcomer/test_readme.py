"""Issue 6: the README's first command works in a fresh environment, and the README
documents every command and option with its default.

The first command is parsed out of README.md itself and must be exactly
``./scripts/setup.sh && .venv/bin/agavefs demo ~/agave-demo``.  The test runs it with
two substitutions, because the environment under test is already set up:

* ``./scripts/setup.sh &&`` is dropped (setup installs Debian packages and creates
  .venv; CI runs it through scripts/test.sh before pytest anyway);
* ``.venv/bin/agavefs`` becomes ``<this interpreter> -m agavefs`` (the package under
  test, whichever venv runs pytest).

``~`` is a fresh HOME in tmp_path, with no XDG_* variables and no AGAVE_CACHE_DIR,
so the demo starts from nothing: it seeds its data directory, logs in with its own
credentials cache and must never create ~/.agave.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from newcomer_support import HAVE_FUSE, REPO, is_live_mount

needs_fuse = pytest.mark.skipif(not HAVE_FUSE, reason="needs /dev/fuse and fusermount3 (apt install fuse3)")

FIRST = "./scripts/setup.sh && .venv/bin/agavefs demo ~/agave-demo"
SECOND = "./scripts/test.sh"


def readme_commands() -> list[str]:
    """The command lines of README.md's ```sh blocks, in order."""
    text = (REPO / "README.md").read_text()
    out = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def test_readme_starts_with_the_two_commands():
    assert readme_commands()[:2] == [FIRST, SECOND]
    for script in ("scripts/setup.sh", "scripts/test.sh"):
        assert os.access(REPO / script, os.X_OK), f"{script} is not executable"


def demo_command(home: Path) -> list[str]:
    line = readme_commands()[0]
    assert line.startswith("./scripts/setup.sh && "), line
    line = line[len("./scripts/setup.sh && "):]
    words = shlex.split(line)
    assert words[0] == ".venv/bin/agavefs", words
    words = [sys.executable, "-m", "agavefs", *words[1:]]
    return [str(home) + w[1:] if w.startswith("~/") else w for w in words]


def fresh_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("XDG_") or k == "XDG_RUNTIME_DIR"}
    env.pop("AGAVE_CACHE_DIR", None)
    env.pop("NOTIFY_SOCKET", None)
    env["HOME"] = str(home)
    return env


class Demo:
    """The demo as a person runs it in a terminal (its own process group)."""

    def __init__(self, cmd: list[str], env: dict, cwd: Path, log_dir: Path):
        self.err_path = log_dir / f"demo-{time.monotonic_ns()}.stderr"
        self.proc = subprocess.Popen(cmd, env=env, cwd=str(cwd), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=open(self.err_path, "wb"),
                                     start_new_session=True)
        self.out = ""

    @property
    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    def read_until(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while not re.search(pattern, self.out):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"the demo did not print {pattern!r} in {timeout} s: {self.out}{self.err}")
            if select.select([fd], [], [], min(left, 0.2))[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"the demo exited ({self.proc.wait(30)}): {self.out}{self.err}")
                self.out += chunk.decode(errors="replace")
        return self.out

    def ctrl_c(self, sig=signal.SIGINT, timeout: float = 90) -> int:
        """What a terminal's Ctrl-C does: the signal to the demo's process group (a group
        made for the demo: only processes this test started, and its own children
        have sessions of their own)."""
        os.killpg(self.proc.pid, sig)
        out, _ = self.proc.communicate(timeout=timeout)
        self.out += out.decode(errors="replace")
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=30)


def server_url(text: str) -> str:
    m = re.search(r"server\s+(http://127\.0\.0\.1:\d+)", text)
    assert m, text
    return m.group(1)


def refused(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        return False
    except OSError:
        return True


@needs_fuse
@pytest.mark.timeout(180)
def test_readme_first_command_in_a_fresh_home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = fresh_env(home)
    cmd = demo_command(home)
    mountpoint = home / "agave-demo"
    assert not mountpoint.exists()  # the demo creates it
    data = home / ".local/share/agavefs/demo/home/demo"

    demo = Demo(cmd, env, REPO, tmp_path)
    try:
        out = demo.read_until(r"Press Ctrl-C", 90)
        assert "first run" in out
        assert is_live_mount(str(mountpoint))
        # it says what to try next
        for hint in ("ls -l ~/agave-demo", "cat ~/agave-demo/README.txt", "cp ", " status"):
            assert hint in out, out
        url = server_url(out)

        # list and read the demo files through the mount
        names = sorted(os.listdir(mountpoint))
        assert {"README.txt", "agave.png", "datasets", "inbox", "papers", "simulations"} <= set(names), names
        assert "Welcome to the agavefs demo" in (mountpoint / "README.txt").read_text()
        png = (mountpoint / "agave.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and png == (data / "agave.png").read_bytes()
        csv_lines = (mountpoint / "datasets/weather/2024-06.csv").read_text().splitlines()
        assert csv_lines[0] == "date,station,temp_c,humidity_pct,rain_mm" and len(csv_lines) > 1000
        assert '"experiment"' in (mountpoint / "datasets/run-config.json").read_text()
        big = mountpoint / "simulations/run-042/output.bin"
        assert big.stat().st_size == 3 * 1024 * 1024
        assert hashlib.sha256(big.read_bytes()).digest() == hashlib.sha256(
            (data / "simulations/run-042/output.bin").read_bytes()).digest()
        r = subprocess.run(["ls", "-l", str(mountpoint / "papers/drafts")], capture_output=True, text=True)
        assert r.returncode == 0 and "agave-notes.md" in r.stdout

        # write one (cp in), and the status command the demo suggests sees the mount
        payload = os.urandom(200_000)
        (tmp_path / "mine.bin").write_bytes(payload)
        subprocess.run(["cp", str(tmp_path / "mine.bin"), str(mountpoint / "inbox/mine.bin")], check=True)
        status_cmd = [sys.executable, "-m", "agavefs", "status", "--json"]
        r = subprocess.run(status_cmd, env=env, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and str(mountpoint) in r.stdout, r.stdout + r.stderr

        # Ctrl-C: drain, unmount, stop the server, exit 0
        code = demo.ctrl_c()
        assert code == 0, demo.out + demo.err
    finally:
        demo.kill()
        if is_live_mount(str(mountpoint)):
            subprocess.run(["fusermount3", "-uz", str(mountpoint)])
    assert "Traceback" not in demo.out + demo.err
    assert "stopped" in demo.out
    assert not os.path.ismount(str(mountpoint))
    assert not mountpoint.exists()  # it made it, it removed it
    assert refused(url), "the demo server is still listening"
    # the file written through the mount is on the server side, whole
    assert (data / "inbox/mine.bin").read_bytes() == payload
    # its own credentials, never ~/.agave
    assert not (home / ".agave").exists()
    creds = home / ".local/share/agavefs/demo-credentials/current"
    assert creds.exists() and oct(creds.stat().st_mode & 0o777) == "0o600"

    # a second run: no seeding, the file is still there; SIGTERM stops it as cleanly
    demo = Demo(cmd, env, REPO, tmp_path)
    try:
        out = demo.read_until(r"Press Ctrl-C", 90)
        assert "first run" not in out
        assert (mountpoint / "inbox/mine.bin").read_bytes() == payload
        (mountpoint / "inbox/second.txt").write_text("second run\n")
        assert demo.ctrl_c(signal.SIGTERM) == 0, demo.err
    finally:
        demo.kill()
        if is_live_mount(str(mountpoint)):
            subprocess.run(["fusermount3", "-uz", str(mountpoint)])
    assert (data / "inbox/second.txt").read_text() == "second run\n"
    assert not (home / ".agave").exists()


@needs_fuse
def test_demo_refuses_a_non_empty_mount_point(tmp_path):
    home = tmp_path / "home"
    (home / "full").mkdir(parents=True)
    (home / "full" / "precious.txt").write_text("mine")
    r = subprocess.run([sys.executable, "-m", "agavefs", "demo", str(home / "full")], env=fresh_env(home),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "is not empty" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert (home / "full" / "precious.txt").read_text() == "mine"
    assert not (home / ".agave").exists()


# -- every option, with its default, is in the README -----------------------------------

def _normalized(text: str) -> str:
    return " ".join(text.split())


def test_readme_lists_every_option_with_its_default():
    from agavefs.cli import COMMANDS, build_parser

    readme = _normalized((REPO / "README.md").read_text())
    missing = []
    for command in COMMANDS:
        parser = build_parser(command)
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        p = sub.choices[command]
        formatter = p._get_formatter()
        assert f"$ agavefs {command} --help" in readme, f"README has no help block for {command}"
        for action in p._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            for opt in action.option_strings:
                if opt not in readme:
                    missing.append(f"{command} {opt}")
            if action.help:
                expanded = _normalized(formatter._expand_help(action))
                expanded = expanded.replace(f"agavefs-{socket.gethostname()}", "agavefs-HOSTNAME")
                # argparse wraps at hyphens too ("--tls- key"); compare without the breaks
                if expanded.replace("- ", "-") not in readme.replace("- ", "-"):
                    missing.append(f"{command} {action.option_strings or action.dest}: {expanded!r}")
    assert not missing, "README.md is out of date (run scripts/readme_help.py):\n" + "\n".join(missing)


def test_readme_help_blocks_are_current():
    r = subprocess.run([sys.executable, str(REPO / "scripts/readme_help.py"), "--check"],
                       capture_output=True, text=True, timeout=60, cwd=str(REPO))
    if r.returncode != 0 and sys.version_info[:2] != (3, 11):
        pytest.skip("argparse lays help out differently on this Python; the option check above covers it")
    assert r.returncode == 0, r.stderr


def test_readme_links_exist():
    text = (REPO / "README.md").read_text()
    targets = [t for t in re.findall(r"\]\(([^)#:]+)\)", text) if not t.startswith("http")]
    assert "docs/screenshot.png" in targets and "SEMANTICS.md" in targets
    missing = [t for t in targets if not (REPO / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"
