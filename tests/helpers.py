"""Test support shared by every layer's tests: the emulator as a real subprocess.

The emulator is always started as ``python -m agavefs serve --port 0 ...`` and
talked to over HTTP, exactly as a user would: its first stdout line is the base URL
(the second, with ``--tls``, the CA file).  Tests only ever kill the processes they
started, by pid.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent


def paging(query: str) -> str:
    """A listing request's query without the field projection that every listing of the
    client carries (``filter``, checked to be ``LIST_FIELDS``): its paging, in order,
    e.g. "offset=0&limit=100"."""
    from urllib.parse import parse_qsl

    from agavefs.client.api import LIST_FIELDS

    pairs = parse_qsl(query, keep_blank_values=True)
    assert [v for k, v in pairs if k == "filter"] == [LIST_FIELDS], query
    return "&".join(f"{k}={v}" for k, v in pairs if k != "filter")


def agavefs_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "agavefs", *args]


class Emulator:
    """``agavefs serve`` in a subprocess.  ``restart()`` keeps root, port and options."""

    def __init__(self, root: Path, *args: str, users=(("demo", "demo"),), log_dir: Path | None = None,
                 access_log: bool = True):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.args = list(args)
        self.users = list(users)
        self.log_dir = Path(log_dir or self.root.parent)
        self.access_log = self.log_dir / f"access-{self.root.name}.jsonl" if access_log else None
        self.stderr_path = self.log_dir / f"emulator-{self.root.name}.stderr"
        self.port = 0
        self.url: str | None = None
        self.ca_file: str | None = None
        self.proc: subprocess.Popen | None = None

    @property
    def tls(self) -> bool:
        return "--tls" in self.args or "--tls-cert" in self.args

    def command(self) -> list[str]:
        cmd = agavefs_cmd("serve", "--root", str(self.root), "--port", str(self.port))
        for name, password in self.users:
            cmd += ["--user", f"{name}:{password}"]
        if self.access_log is not None:
            cmd += ["--access-log", str(self.access_log)]
        return cmd + self.args

    def start(self, timeout: float = 30.0) -> "Emulator":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=stderr,
                                     stdin=subprocess.DEVNULL, cwd=str(REPO))
        stderr.close()
        lines = self._read_lines(2 if self.tls else 1, timeout)
        self.url = lines[0].strip()
        assert self.url.startswith(("http://", "https://")), f"first line is not a URL: {self.url!r}"
        if self.tls:
            self.ca_file = lines[1].strip()
        self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])
        return self

    def _read_lines(self, n: int, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        out: list[str] = []
        buf = b""
        fd = self.proc.stdout.fileno()
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise TimeoutError(f"emulator did not print its URL; stderr: {self.stderr_text()}")
            ready, _, _ = select.select([fd], [], [], min(left, 0.5))
            if not ready:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"emulator exited {self.proc.returncode}: {self.stderr_text()}")
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"emulator closed stdout: {self.stderr_text()}")
            buf += chunk
            while b"\n" in buf and len(out) < n:
                line, buf = buf.split(b"\n", 1)
                out.append(line.decode())
        return out

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self, *new_args: str) -> "Emulator":
        self.stop()
        if new_args:
            self.args = list(new_args)
        # the port may linger in TIME_WAIT; the server sets SO_REUSEADDR
        return self.start()

    # -- helpers for tests ---------------------------------------------------
    def verify(self):
        return self.ca_file if self.tls else True

    def access_entries(self) -> list[dict]:
        if self.access_log is None or not self.access_log.exists():
            return []
        with open(self.access_log) as f:
            return [json.loads(line) for line in f if line.strip()]

    def settled_entries(self, quiet: float = 0.3, timeout: float = 10.0) -> list[dict]:
        """``access_entries`` once the log has stopped growing for ``quiet`` seconds: a
        request's line is written after its answer is sent, so a client may be done
        before the line of its last request is there."""
        entries = self.access_entries()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(quiet)
            again = self.access_entries()
            if len(again) == len(entries):
                break
            entries = again
        return entries

    def home(self, user: str = "demo") -> Path:
        return self.root / "home" / user


def password_token(url: str, user: str, password: str, verify=True, client_name: str = "tests") -> dict:
    """Plain-requests tutorial flow: create an OAuth client, then a password grant."""
    r = requests.post(f"{url}/clients/v2", auth=(user, password), data={"clientName": client_name},
                      verify=verify, timeout=30)
    if r.status_code == 400 and "exist" in r.text:
        requests.delete(f"{url}/clients/v2/{client_name}", auth=(user, password), verify=verify, timeout=30)
        r = requests.post(f"{url}/clients/v2", auth=(user, password), data={"clientName": client_name},
                          verify=verify, timeout=30)
    r.raise_for_status()
    client = r.json()["result"]
    t = requests.post(f"{url}/token", auth=(client["consumerKey"], client["consumerSecret"]),
                      data={"grant_type": "password", "username": user, "password": password,
                            "scope": "PRODUCTION"}, verify=verify, timeout=30)
    t.raise_for_status()
    tok = t.json()
    tok["apikey"] = client["consumerKey"]
    tok["apisecret"] = client["consumerSecret"]
    return tok


def digest_tree(root: Path) -> dict[str, str | None]:
    """relative path -> sha256 (None for directories)."""
    out: dict[str, str | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames:
            out[os.path.normpath(os.path.join(rel, name))] = None
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                out[os.path.normpath(os.path.join(rel, name))] = hashlib.sha256(f.read()).hexdigest()
    return out
