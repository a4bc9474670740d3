"""``agavefs demo MOUNTPOINT``: a complete agavefs on this machine, in one command.

It starts the embedded Agave server over a persistent data directory, logs the demo
user in with a credentials cache of its own, mounts the user's home folder on
MOUNTPOINT (created if missing) and waits; Ctrl-C (or SIGTERM) lets pending uploads
reach the server, unmounts and stops the server.  Your own ~/.agave/current is never
read or written.

Design note
-----------
Everything is a child process started in a session of its own, exactly as a person
would run it: ``agavefs serve`` (its first stdout line is the URL), ``agavefs login
--password-stdin``, ``agavefs mount --ready-fd`` (the mount daemon itself, which
reports READY or one sentence on the pipe) and, at the end, ``agavefs umount``
(which drains uploads and prints its progress).  Own sessions mean a Ctrl-C at the
terminal reaches only this process, which then stops the others in order: mount
first (while the server still takes the uploads), server last.  A second Ctrl-C
stops waiting for uploads; they stay in the spool and are sent by the next
``agavefs demo`` over the same data directory.

Files (XDG_DATA_HOME defaults to ~/.local/share, XDG_CACHE_HOME to ~/.cache):

* ``$XDG_DATA_HOME/agavefs/demo``: the server's files (``--data-dir``); the demo
  user's home is ``home/demo`` inside it, seeded with example files on first run;
* ``<data dir>-credentials/current``: the demo user's credentials cache;
* ``<data dir>-server.log`` and ``<data dir>-mount.log``: the logs;
* ``$XDG_CACHE_HOME/agavefs/demo-<hash of the data dir>``: the mount's spool.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

DEMO_USER = "demo"
DEMO_PASSWORD = "demo"
DEFAULT_STAGING_DELAY = 0.5


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "agavefs" / "demo"


def register(sub, name, help_text, formatter_class) -> None:
    class Formatter(formatter_class):
        def _get_help_string(self, action):  # no "(default: None)" noise
            if action.default in (None, False) or action.dest == "verbose":
                return action.help
            return super()._get_help_string(action)

    p = sub.add_parser(name, help=help_text, description=__doc__.split("\n\n")[1],
                       formatter_class=Formatter)
    p.add_argument("mountpoint", metavar="MOUNTPOINT",
                   help="where to mount the demo files (created when missing; must be empty)")
    p.add_argument("--data-dir", metavar="DIR", default=None,
                   help="the demo server's files, kept between runs "
                        "(default: $XDG_DATA_HOME/agavefs/demo, i.e. ~/.local/share/agavefs/demo)")
    p.add_argument("--port", type=int, default=0,
                   help="loopback port of the demo server (0 = any free port)")
    p.add_argument("--staging-delay", type=float, default=DEFAULT_STAGING_DELAY, metavar="SECONDS",
                   help="the server's delay before an uploaded file is in place (as 'agavefs serve')")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="show the mount's log here instead of in the log file: -v uploads and "
                        "refreshes, -vv every HTTP request and FUSE call")
    p.set_defaults(func=run)


# ---------------------------------------------------------------------------- seeding

def _png(width: int, height: int) -> bytes:
    """A small RGB PNG drawn in code: a sky-to-sand gradient with an agave-green disc."""
    rows = []
    cx, cy, r2 = width * 0.5, height * 0.62, (min(width, height) * 0.28) ** 2
    for y in range(height):
        row = bytearray([0])  # filter type 0
        for x in range(width):
            t = y / max(1, height - 1)
            if (x - cx) ** 2 + (y - cy) ** 2 <= r2:
                px = (46, 125 + (x * 60) // width, 80)
            elif t < 0.7:
                px = (90 + int(100 * t), 150 + int(80 * t), 230)
            else:
                px = (222, 196, 140)
            row += bytes(px)
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"".join(rows), 9)) + chunk(b"IEND", b""))


def _csv(rng: random.Random, days: int) -> str:
    lines = ["date,station,temp_c,humidity_pct,rain_mm"]
    for day in range(days):
        for station in ("AUS-01", "AUS-02", "ELP-07"):
            lines.append(f"2024-06-{day % 30 + 1:02d},{station},{rng.uniform(22, 39):.1f},"
                         f"{rng.uniform(15, 80):.0f},{max(0.0, rng.gauss(0.5, 2)):.1f}")
    return "\n".join(lines) + "\n"


SEED_README = """\
Welcome to the agavefs demo.

This folder is the home folder of the user "demo" on a storage system served by
the embedded Agave server ('agavefs serve') on this machine. agavefs mounts it
like any other folder: everything you do here goes through the Agave v2 files
API, as it would against a real science gateway.

Try:   ls -l            list (one request per folder, not per file)
       cat datasets/run-config.json
       cp ~/some-file inbox/     the copy returns at once; the upload follows
       agavefs status   what the mount is doing (uploads, cache, requests)

The files live on the server side in ~/.local/share/agavefs/demo/home/demo and
stay there between runs of 'agavefs demo'.
"""


def seed(home: Path) -> None:
    """Example folders and files of a few kinds and sizes (deterministic)."""
    rng = random.Random(2024)
    files: dict[str, bytes] = {
        "README.txt": SEED_README.encode(),
        "datasets/weather/stations.csv": (
            "station,name,lat,lon,elevation_m\n"
            "AUS-01,Austin Camp Mabry,30.3208,-97.7604,205\n"
            "AUS-02,Austin Bergstrom,30.1830,-97.6799,148\n"
            "ELP-07,El Paso Franklin Mts,31.8900,-106.4800,1380\n").encode(),
        "datasets/weather/2024-06.csv": _csv(rng, 600).encode(),
        "datasets/run-config.json": json.dumps({
            "experiment": "agave-drought-response", "runs": 42, "solver": {"name": "rk45", "tol": 1e-6},
            "inputs": ["weather/2024-06.csv", "weather/stations.csv"], "owner": DEMO_USER,
        }, indent=2).encode() + b"\n",
        "agave.png": _png(160, 120),
        "simulations/run-042/output.bin": rng.randbytes(3 * 1024 * 1024),
        "simulations/run-042/log.txt": "".join(
            f"step {i:04d} residual {10 ** (-i / 40):.3e}\n" for i in range(240)).encode(),
        "papers/drafts/agave-notes.md": (
            "# Notes\n\nAgave (Tapis v2) storage systems, mounted with agavefs.\n\n"
            "- listings fill file attributes, so `ls -l` is one request per folder\n"
            "- writes land in a local spool and upload after close\n").encode(),
    }
    for rel, data in files.items():
        path = home / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (home / "inbox").mkdir(parents=True, exist_ok=True)


# ---------------------------------------------------------------------------- the run

class DemoError(Exception):
    """A sentence for the person running the demo."""


class Demo:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.data_dir = Path(os.path.abspath(os.path.expanduser(args.data_dir))) if args.data_dir \
            else default_data_dir()
        self.home = self.data_dir / "home" / DEMO_USER
        self.creds_dir = self.data_dir.with_name(self.data_dir.name + "-credentials")
        self.server_log = self.data_dir.with_name(self.data_dir.name + "-server.log")
        self.mount_log = self.data_dir.with_name(self.data_dir.name + "-mount.log")
        cache_base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        key = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        self.spool_dir = Path(cache_base) / "agavefs" / f"demo-{key}"
        self.mountpoint = os.path.abspath(os.path.expanduser(args.mountpoint))
        self.created_mountpoint = False
        self.server: subprocess.Popen | None = None
        self.mount: subprocess.Popen | None = None
        self.mounted = False
        self.url: str | None = None
        self.stop_requests = 0
        self.lock_file = None

    # -- helpers ---------------------------------------------------------------
    def env(self) -> dict:
        env = dict(os.environ, AGAVE_CACHE_DIR=str(self.creds_dir))
        env.pop("NOTIFY_SOCKET", None)  # our children are not the service
        return env

    @staticmethod
    def agavefs(*args: str) -> list[str]:
        return [sys.executable, "-m", "agavefs", *args]

    def say(self, text: str) -> None:
        print(text, flush=True)

    def on_signal(self, signum, frame) -> None:
        self.stop_requests += 1

    def stopping(self) -> bool:
        return self.stop_requests > 0

    # -- steps -----------------------------------------------------------------
    def prepare(self) -> None:
        from agavefs.cli.mount import check_mountpoint

        if not os.path.exists(self.mountpoint) and not os.path.islink(self.mountpoint):
            try:
                os.makedirs(self.mountpoint)
            except OSError as exc:
                raise DemoError(f"cannot create the mount point {self.mountpoint}: {exc.strerror}") from None
            self.created_mountpoint = True
        problem = check_mountpoint(self.mountpoint)
        if problem:
            raise DemoError(problem)
        try:
            self.data_dir.parent.mkdir(parents=True, exist_ok=True)
            self.lock_file = open(self.data_dir.with_name(self.data_dir.name + ".lock"), "a+")
        except OSError as exc:
            raise DemoError(f"cannot use the data directory {self.data_dir}: {exc.strerror}") from None
        try:
            fcntl.flock(self.lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DemoError(f"another 'agavefs demo' is using {self.data_dir}: stop it first (Ctrl-C in "
                            f"its terminal) or give this one --data-dir DIR") from None
        if not self.home.exists():
            self.say(f"agavefs demo: first run: putting example files in {self.home}")
            seed(self.home)

    def start_server(self) -> None:
        cmd = self.agavefs("serve", "--root", str(self.data_dir), "--port", str(self.args.port),
                           "--user", f"{DEMO_USER}:{DEMO_PASSWORD}",
                           "--staging-delay", str(self.args.staging_delay))
        log = open(self.server_log, "ab")
        self.server = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                       start_new_session=True, env=self.env())
        log.close()
        line = self._read_line(self.server.stdout.fileno(), self.server, 30)
        if not line.startswith(("http://", "https://")):
            said = [l for l in _tail(self.server_log, 20).split(" / ") if l.startswith("agavefs serve:")]
            why = said[-1].removeprefix("agavefs serve: ") if said else _tail(self.server_log)
            hint = "; choose another --port, or leave it out for any free port" if self.args.port else ""
            raise DemoError(f"the demo server did not start: {why or 'no reason given'}{hint} "
                            f"(its log: {self.server_log})")
        self.url = line

    def login(self) -> None:
        cmd = self.agavefs("login", "--base-url", self.url, "--username", DEMO_USER, "--password-stdin",
                           "--client-name", "agavefs-demo", "--agave-cache-dir", str(self.creds_dir))
        r = subprocess.run(cmd, input=DEMO_PASSWORD + "\n", capture_output=True, text=True, env=self.env(),
                           timeout=120, start_new_session=True)
        if r.returncode != 0:
            raise DemoError(f"could not log the demo user in: {r.stderr.strip() or r.stdout.strip()}")

    def start_mount(self) -> None:
        read_fd, write_fd = os.pipe()
        cmd = self.agavefs("mount", self.mountpoint, "--agave-cache-dir", str(self.creds_dir),
                           "--cache-dir", str(self.spool_dir), "--ready-fd", str(write_fd))
        if self.args.verbose:
            cmd.append("-" + "v" * self.args.verbose)
            stderr = None  # the log goes to our terminal
        else:
            cmd += ["-v", "--log-file", str(self.mount_log)]
            stderr = open(self.mount_log, "ab")  # what libfuse itself prints
        try:
            self.mount = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=stderr, pass_fds=(write_fd,), start_new_session=True,
                                          env=self.env())
        finally:
            os.close(write_fd)
            if stderr is not None:
                stderr.close()
        try:
            answer = self._read_line(read_fd, self.mount, 120)
        finally:
            os.close(read_fd)
        if answer == "READY":
            self.mounted = True
        else:
            if not answer:
                answer = f"the mount daemon exited without a word; see {self.mount_log}"
            raise DemoError(answer)

    def _read_line(self, fd: int, proc: subprocess.Popen, timeout: float) -> str:
        """The first line ``proc`` writes on ``fd`` ('' when it exits or time runs out)."""
        buf = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stopping():
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                buf += chunk
                if b"\n" in buf:
                    break
            elif proc.poll() is not None:
                break
        if self.stopping():
            raise KeyboardInterrupt
        return buf.split(b"\n", 1)[0].decode(errors="replace").strip()

    def me(self) -> str:
        """How to run agavefs from another terminal."""
        argv0 = sys.argv[0]
        if os.path.basename(argv0) == "agavefs" and os.path.exists(argv0):
            found = shutil.which("agavefs")
            if found and os.path.realpath(found) == os.path.realpath(argv0):
                return "agavefs"
            return os.path.abspath(argv0)
        return f"{sys.executable} -m agavefs"

    def welcome(self) -> None:
        mp = _shell_path(self.mountpoint)
        me = self.me()
        self.say(f"""
agavefs demo: the demo user's files are mounted on {self.mountpoint}
  server       {self.url} (user {DEMO_USER}, password {DEMO_PASSWORD}; system local.storage)
  files        {self.home}
  logs         {self.mount_log if not self.args.verbose else 'here'} and {self.server_log}

Try, in another terminal:
  ls -l {mp}
  cat {mp}/README.txt
  cp /etc/os-release {mp}/inbox/
  {me} status

Press Ctrl-C here to let uploads finish, unmount and stop the server.""")

    def wait(self) -> int:
        while not self.stopping():
            time.sleep(0.2)
            if self.mount.poll() is not None:
                print(f"agavefs demo: the mount daemon stopped unexpectedly (status {self.mount.returncode}); "
                      f"see {self.mount_log}", file=sys.stderr)
                return 1
            if self.server.poll() is not None:
                print(f"agavefs demo: the demo server stopped unexpectedly (status {self.server.returncode}); "
                      f"see {self.server_log}", file=sys.stderr)
                return 1
        return 0

    def unmount(self) -> None:
        """Drain (unless asked twice), unmount, wait for the daemon."""
        if self.mount is None:
            return
        if self.mount.poll() is None and not self.mounted:
            self.mount.terminate()  # not live yet: the daemon unmounts itself on SIGTERM
        elif self.mount.poll() is None:
            seen = self.stop_requests
            self.say("\nagavefs demo: finishing uploads and unmounting (Ctrl-C again to stop without waiting)")
            umount = subprocess.Popen(self.agavefs("umount", self.mountpoint), stdin=subprocess.DEVNULL,
                                      start_new_session=True, env=self.env())
            while umount.poll() is None:
                time.sleep(0.1)
                if self.stop_requests > seen:
                    umount.terminate()
                    umount.wait(10)
                    print(f"agavefs demo: not waiting for uploads; they stay in {self.spool_dir} and are "
                          f"sent the next time you run agavefs demo", file=sys.stderr)
                    subprocess.run(self.agavefs("umount", "--force", "--quiet", self.mountpoint),
                                   stdin=subprocess.DEVNULL, start_new_session=True, env=self.env(),
                                   timeout=60)
                    break
        try:
            self.mount.wait(60)
        except subprocess.TimeoutExpired:
            self.mount.kill()
            self.mount.wait(10)
        if os.path.ismount(self.mountpoint) or _stale(self.mountpoint):
            subprocess.run(["fusermount3", "-uz", self.mountpoint], capture_output=True)

    def stop_server(self) -> None:
        if self.server is None:
            return
        if self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(15)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait(10)
        if self.server.stdout is not None:
            self.server.stdout.close()

    def cleanup(self) -> None:
        try:
            self.unmount()
        finally:
            self.stop_server()
            if self.created_mountpoint:
                try:
                    os.rmdir(self.mountpoint)
                except OSError:
                    pass
            if self.lock_file is not None:
                self.lock_file.close()


def _stale(path: str) -> bool:
    try:
        os.statvfs(path)
        return False
    except OSError as exc:
        return exc.errno in (107, 103)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " / ".join(text[-lines:])


def _shell_path(path: str) -> str:
    home = os.path.expanduser("~")
    if home not in ("", "/") and path.startswith(home + os.sep):
        return "~" + path[len(home):]
    return path


def run(args: argparse.Namespace) -> int:
    demo = Demo(args)
    previous = {sig: signal.signal(sig, demo.on_signal) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    code = 0
    try:
        demo.prepare()
        demo.start_server()
        demo.login()
        demo.start_mount()
        demo.welcome()
        code = demo.wait()
    except DemoError as exc:
        print(f"agavefs demo: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 0  # asked to stop while starting
    finally:
        demo.cleanup()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code == 0:
        demo.say(f"agavefs demo: stopped. Your demo files are in {demo.home}")
    return code
