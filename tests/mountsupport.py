"""Real mounts for tests: the emulator in a subprocess, ``agavefs login`` for
credentials, ``agavefs mount --foreground`` in a subprocess, and an unmount that
always happens (``agavefs umount``, then ``fusermount3 -u``/``-uz``, then killing
the daemon by its pid).  Imported as ``mountsupport`` (a name no other test
directory uses, unlike ``conftest``); ``tests/mount/conftest.py`` adds the fixtures."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from helpers import agavefs_cmd

HAVE_FUSE = os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


def fusermount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["fusermount3", *args], capture_output=True, text=True)


def is_live_mount(path: str) -> bool:
    try:
        os.statvfs(path)
    except OSError:
        return False
    return os.path.ismount(path)


def is_stale(path: str) -> bool:
    try:
        os.statvfs(path)
        return False
    except OSError as exc:
        return exc.errno in (107, 103)  # ENOTCONN, ECONNABORTED


def login(emu, creds_dir: Path, user: str = "demo", password: str = "demo") -> Path:
    creds_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, AGAVE_CACHE_DIR=str(creds_dir))
    args = ["login", "--base-url", emu.url, "--username", user, "--password-stdin",
            "--client-name", f"tests-{user}"]
    if emu.tls:
        args += ["--ca-bundle", emu.ca_file]
    r = subprocess.run(agavefs_cmd(*args), input=password + "\n", capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    return creds_dir


class Mount:
    """One ``agavefs mount --foreground`` daemon of the tests."""

    def __init__(self, emu, base: Path, *args: str, user: str = "demo", password: str = "demo",
                 source: str | None = None, name: str = "mnt"):
        self.emu = emu
        self.base = base
        self.user = user
        self.args = list(args)
        self.source = source
        self.mountpoint = base / name
        self.cache_dir = base / f"{name}-cache"
        self.log_file = base / f"{name}.log"
        self.creds = login(emu, base / f"creds-{user}", user, password)
        self.proc: subprocess.Popen | None = None

    @property
    def path(self) -> Path:
        return self.mountpoint

    def env(self) -> dict:
        return dict(os.environ, AGAVE_CACHE_DIR=str(self.creds))

    def command(self) -> list[str]:
        cmd = agavefs_cmd("mount", "--foreground")
        if self.source:
            cmd.append(self.source)
        cmd += [str(self.mountpoint), "--cache-dir", str(self.cache_dir), "--log-file", str(self.log_file),
                "-vv"]
        if self.emu.tls:
            cmd += ["--ca-bundle", self.emu.ca_file]
        return cmd + self.args

    def start(self, timeout: float = 30) -> "Mount":
        if is_stale(str(self.mountpoint)):
            fusermount("-uz", str(self.mountpoint))
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.command(), env=self.env(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=open(self.base / "mount.stderr", "ab"))
        deadline = time.monotonic() + timeout
        while not is_live_mount(str(self.mountpoint)):
            if self.proc.poll() is not None:
                raise RuntimeError(f"mount daemon exited {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"mount did not come up: {self.log_tail()}")
            time.sleep(0.05)
        return self

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 3000) -> str:
        err = ""
        try:
            err = (self.base / "mount.stderr").read_text(errors="replace")
        except OSError:
            pass
        return (self.log_text() + err)[-n:]

    def agavefs(self, *args: str, timeout: float = 300, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(agavefs_cmd(*args), env=self.env(), capture_output=True, text=True,
                              timeout=timeout, input=input)

    def umount(self, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """``agavefs umount`` (drains uploads); returns its result."""
        r = self.agavefs("umount", str(self.mountpoint), *extra, timeout=timeout)
        if self.proc is not None:
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        return r

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the daemon (only ours, by pid) and clear what it leaves."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        deadline = time.monotonic() + 10
        while os.path.ismount(str(self.mountpoint)) or is_stale(str(self.mountpoint)):
            fusermount("-uz", str(self.mountpoint))
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None and is_live_mount(str(self.mountpoint)):
            try:
                self.agavefs("umount", "--force", str(self.mountpoint), timeout=60)
            except subprocess.TimeoutExpired:
                pass
        if is_live_mount(str(self.mountpoint)) or is_stale(str(self.mountpoint)):
            fusermount("-u", str(self.mountpoint))
            if os.path.ismount(str(self.mountpoint)) or is_stale(str(self.mountpoint)):
                fusermount("-uz", str(self.mountpoint))
        self.kill()
