#!/usr/bin/env python3
"""Soak agavefs: random operations from several processes against a real mount and a
model, with the server's faults switched on and off, every byte checked.

It starts its own emulator (``agavefs serve``), logs in (``agavefs login
--password-stdin``) and mounts (``agavefs mount --foreground``) in a scratch
directory, then runs ``--workers`` processes for ``--minutes``.  Each worker owns a
directory of the mount and keeps a model of it (files -> bytes, directories); every
operation's result is checked against the model (reads byte for byte, sizes, listings)
and any failed system call is an error: the faults below must all be absorbed by
the client's retries, token refresh and write-back.  A shared directory written
before the mount is read by all workers and checked too.

Meanwhile the main process cycles through fault phases of ``--phase-seconds``,
restarting the emulator on the same port with other knobs each time (the restart is
itself a fault: in-flight requests are cut, queued staging jobs fail):

    calm          no knob
    fail-rate     --fail-rate 0.2 (503 for one request in five, token calls included)
    latency       --latency 150
    token-ttl     --token-ttl 3 (every other phase has --token-ttl 8: the mount refreshes
                  its token all the time)
    staging-fail  AGAVEFS_EMULATOR_STAGING_FAIL=0.3
    staging-lose  AGAVEFS_EMULATOR_STAGING_LOSE=0.3 (the mount uses --staging-timeout 4)
    range-rfc     --range-mode rfc; range-ignore: --range-mode ignore
    max-page      --max-page 7 (not in the default cycle, see DEFAULT_ORDER)
    outage        the server stopped for --outage seconds (shorter than --op-timeout)
    freeze        the server SIGSTOPped for --outage seconds (accepts, never answers)

``--faults a,b`` keeps only those phases (e.g. ``--faults token-ttl`` for the token
soak; scripts/token_soak.py is that with 5 minutes).  At the end every worker checks
its whole tree through the mount, the mount is unmounted (which waits for every
upload) and the emulator's backing directory is compared with the models, byte for
byte.  Exit status 0 when nothing failed and nothing was lost; a JSON summary goes
to stdout (and to ``--json FILE``).

Only processes this script started are signalled, by pid.  Usage:

    python scripts/soak.py --minutes 10 [--workers 4] [--seed 1] [--keep]
"""

from __future__ import annotations

import argparse
import ast
import collections
import datetime
import errno
import hashlib
import json
import multiprocessing
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HIDDEN = ".agavefs~"

PHASES = {
    "calm": ([], {}),
    "fail-rate": (["--fail-rate", "0.2"], {}),
    "latency": (["--latency", "150"], {}),
    "token-ttl": (["--token-ttl", "3"], {}),
    "staging-fail": ([], {"AGAVEFS_EMULATOR_STAGING_FAIL": "0.3"}),
    "staging-lose": ([], {"AGAVEFS_EMULATOR_STAGING_LOSE": "0.3"}),
    "range-rfc": (["--range-mode", "rfc"], {}),
    "range-ignore": (["--range-mode", "ignore"], {}),
    "max-page": (["--max-page", "7"], {}),
    "outage": (None, {}),
    "freeze": (None, {}),
}
# max-page is not in the default cycle: the client learns a server's page cap once and
# assumes it does not change while mounted (a cap that shrinks mid-mount truncates
# listings; real Agave has no cap at all).  ``--faults max-page`` runs it alone.
DEFAULT_ORDER = ["calm", "fail-rate", "outage", "token-ttl", "staging-lose", "latency", "freeze",
                 "staging-fail", "range-ignore", "range-rfc"]


def agavefs(*args: str) -> list[str]:
    return [sys.executable, "-m", "agavefs", *args]


# -- the emulator ----------------------------------------------------------------------------
class Server:
    # tokens keep expiring in every phase (a token lives as long as the server said when it
    # was issued, so a short TTL in one phase only would not outlive a long-lived token)
    BASE = ["--staging-delay", "0.2", "--token-ttl", "8"]

    def __init__(self, work: Path):
        self.root = work / "root"
        self.root.mkdir(parents=True, exist_ok=True)
        self.access_log = work / "access.jsonl"
        self.stderr = open(work / "emulator.stderr", "ab")
        self.port = 0
        self.url = ""
        self.proc: subprocess.Popen | None = None
        self.frozen = False
        self.starts = 0

    def start(self, args=(), env=None) -> None:
        cmd = agavefs("serve", "--root", str(self.root), "--port", str(self.port),
                      "--access-log", str(self.access_log), *self.BASE, *args)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.stderr, stdin=subprocess.DEVNULL,
                                     env=dict(os.environ, **(env or {})), cwd=str(REPO))
        deadline = time.monotonic() + 60
        buf = b""
        try:
            while b"\n" not in buf:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("the emulator did not start")
                ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
                if ready:
                    chunk = os.read(self.proc.stdout.fileno(), 4096)
                    if not chunk:
                        raise RuntimeError("the emulator closed its stdout")
                    buf += chunk
        except BaseException:
            if self.proc.poll() is None:  # never leave one behind holding the port
                self.proc.kill()  # ours, by pid
                self.proc.wait(10)
            raise
        self.url = buf.split(b"\n")[0].decode().strip()
        self.port = int(self.url.rsplit(":", 1)[1])
        self.starts += 1

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.frozen:
            self.thaw()
        self.proc.send_signal(signal.SIGTERM)  # ours, by pid
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def freeze(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)
        self.frozen = False

    def restart(self, args=(), env=None) -> None:
        self.stop()
        for _ in range(50):
            try:
                self.start(args, env)
                return
            except RuntimeError:
                time.sleep(0.2)  # the port may linger for a moment
        raise RuntimeError("the emulator did not come back on its port")

    def faults(self) -> tuple[int, int]:
        """(requests served, 503s injected) from the access log."""
        total = injected = 0
        try:
            with open(self.access_log) as f:
                for line in f:
                    total += 1
                    if '"status": 503' in line:
                        injected += 1
        except OSError:
            pass
        return total, injected


# -- the mount --------------------------------------------------------------------------------
class MountProc:
    def __init__(self, work: Path, server: Server, op_timeout: float, staging_timeout: float, verbose: int):
        self.work = work
        self.server = server
        self.mountpoint = work / "mnt"
        self.cache = work / "cache"
        self.creds = work / "creds"
        self.log = work / "mount.log"
        self.args = ["--op-timeout", str(op_timeout), "--staging-timeout", str(staging_timeout)]
        self.verbose = verbose
        self.proc: subprocess.Popen | None = None
        self.log_pos = 0
        self.relogins = 0

    def env(self) -> dict:
        return dict(os.environ, AGAVE_CACHE_DIR=str(self.creds))

    def login(self) -> None:
        r = subprocess.run(agavefs("login", "--base-url", self.server.url, "--username", "demo",
                                   "--password-stdin", "--client-name", "soak"),
                           input="demo\n", capture_output=True, text=True, env=self.env(), timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"login failed: {r.stderr}")

    def start(self) -> None:
        self.mountpoint.mkdir(exist_ok=True)
        cmd = agavefs("mount", "--foreground", str(self.mountpoint), "--cache-dir", str(self.cache),
                      "--log-file", str(self.log), *(["-" + "v" * self.verbose] if self.verbose else []),
                      *self.args)
        self.proc = subprocess.Popen(cmd, env=self.env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.work / "mount.stderr", "ab"))
        deadline = time.monotonic() + 60
        while not self.live():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the mount did not come up; see " + str(self.log))
            time.sleep(0.05)

    def watch(self) -> None:
        """Watch for a dead session until ``cleanup``, from a thread: a token refresh
        whose answer a server restart cut may have rotated the refresh token
        server-side (the real gateway does the same), at any restart, the last one
        too: the mount then answers EACCES with "log in again", and its uploads wait;
        so log in again, as a user would; the mount adopts the new token."""
        self._watching = threading.Event()

        def loop():
            while not self._watching.wait(0.3):
                try:
                    self.watch_session()
                except Exception as exc:  # noqa: BLE001 - try again at the next look
                    print(f"soak: logging in again failed: {exc}", file=sys.stderr)

        threading.Thread(target=loop, name="session-watch", daemon=True).start()

    def watch_session(self) -> None:
        try:
            with open(self.log, "rb") as f:
                f.seek(self.log_pos)
                chunk = f.read()
        except OSError:
            return
        self.log_pos += len(chunk)
        if b"token refresh failed" in chunk:
            self.relogins += 1
            self.login()

    def live(self) -> bool:
        try:
            os.statvfs(self.mountpoint)
        except OSError:
            return False
        return os.path.ismount(self.mountpoint)

    def umount(self, timeout: float = 600) -> bool:
        r = subprocess.run(agavefs("umount", str(self.mountpoint)), env=self.env(), capture_output=True,
                           text=True, timeout=timeout)
        if self.proc is not None:
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        return r.returncode == 0

    def cleanup(self) -> None:
        if getattr(self, "_watching", None) is not None:
            self._watching.set()
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.umount(timeout=120)
            except subprocess.TimeoutExpired:
                pass
        for flags in ("-u", "-uz"):
            if os.path.ismount(self.mountpoint) or _stale(self.mountpoint):
                subprocess.run(["fusermount3", flags, str(self.mountpoint)], capture_output=True)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # ours, by pid
            self.proc.wait(10)


def _stale(path: Path) -> bool:
    try:
        os.statvfs(path)
        return False
    except OSError as exc:
        return exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)


# -- the workers ------------------------------------------------------------------------------
class Failure(Exception):
    pass


class Worker:
    """Random operations in ``base`` (the worker's directory of the mount), checked
    against ``files``/``dirs`` (paths relative to ``base``)."""

    def __init__(self, wid: int, base: Path, shared: Path, shared_model: dict, seed: int, phase, stop,
                 op_timeout: float = 20.0):
        self.op_timeout = op_timeout
        self.wid = wid
        self.base = base
        self.shared = shared
        self.shared_model = shared_model
        self.rng = random.Random(seed * 1000 + wid)
        self.phase = phase
        self.stop = stop
        self.files: dict[str, bytes] = {}
        self.dirs: set[str] = {""}
        self.stats = {"ops": 0, "bytes_written": 0, "bytes_read_checked": 0, "fsyncs": 0, "failures": 0,
                      "refused": 0, "fsync_timeouts": 0, "auth_refusals": 0}
        self.auth_examples: list[str] = []
        self.failures: list[str] = []
        self.counter = 0
        self.op_paths: list[str] = []
        self.trace: collections.deque = collections.deque(maxlen=2000)  # (time, op, paths, ok)

    # helpers
    def p(self, rel: str) -> Path:
        self.op_paths.append(rel)
        return self.base / rel if rel else self.base

    def history_of(self, text: str) -> str:
        """The recent operations that named a path containing ``text`` (for failures)."""
        hits = [f"{t:.3f} {op}{paths}{'' if ok else ' FAILED'}" for t, op, paths, ok in self.trace
                if any(text in x for x in paths)]
        return "; recent operations on it: " + (", ".join(hits[-12:]) or "none")

    def new_name(self, prefix: str) -> str:
        self.counter += 1
        names = [f"{prefix}{self.counter}", f"{prefix} {self.counter} #%?+&", f"{prefix}-ü{self.counter}",
                 f".{prefix}{self.counter}"]
        return self.rng.choice(names)

    def some_dir(self) -> str:
        return self.rng.choice(sorted(self.dirs))

    def some_file(self) -> str | None:
        return self.rng.choice(sorted(self.files)) if self.files else None

    def data(self) -> bytes:
        size = self.rng.choice([0, 1, 17, 4096, 65_536, 131_073, 300_000])
        return self.rng.randbytes(size)

    def diagnose(self, rel: str, got: bytes, want: bytes) -> str:
        """Where the bytes differ, and what a read that bypasses the page cache gives."""
        first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        text = f"got {len(got)} bytes, expected {len(want)}, first difference at {first}"
        try:
            with open(self.p(rel), "rb") as f:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                again = f.read()
            st = os.stat(self.p(rel))
            text += (f"; a re-read without the page cache gives {len(again)} bytes, "
                     f"{'the model' if again == self.files[rel] else 'NOT the model'}; st_size {st.st_size} "
                     f"st_ino {st.st_ino} mtime {st.st_mtime}")
            # is it another file's content?
            others = [k for k, v in self.files.items() if k != rel and got and got in v]
            if others:
                text += f"; the bytes read belong to {others[:3]}"
        except OSError as exc:
            text += f"; re-read failed: {exc!r}"
        return text

    def check(self, cond: bool, what: str) -> None:
        if not cond:
            raise Failure(what)

    # operations
    def op_create(self):
        d = self.some_dir()
        rel = f"{d}/{self.new_name('f')}".lstrip("/")
        data = self.data()
        with open(self.p(rel), "wb") as f:
            f.write(data)
        self.files[rel] = data
        self.stats["bytes_written"] += len(data)

    def op_overwrite(self):
        rel = self.some_file()
        if rel is None:
            return self.op_create()
        data = self.data()
        with open(self.p(rel), "wb") as f:
            f.write(data)
        self.files[rel] = data
        self.stats["bytes_written"] += len(data)

    def op_append(self):
        rel = self.some_file()
        if rel is None:
            return self.op_create()
        extra = self.rng.randbytes(self.rng.choice([1, 100, 5000]))
        with open(self.p(rel), "ab") as f:
            f.write(extra)
        self.files[rel] += extra
        self.stats["bytes_written"] += len(extra)

    def op_patch(self):
        rel = self.some_file()
        if rel is None or not self.files[rel]:
            return self.op_create()
        old = self.files[rel]
        at = self.rng.randrange(len(old))
        patch = self.rng.randbytes(self.rng.choice([1, 10, 3000]))
        with open(self.p(rel), "r+b") as f:
            f.seek(at)
            f.write(patch)
        new = bytearray(old)
        new[at:at + len(patch)] = patch
        self.files[rel] = bytes(new)
        self.stats["bytes_written"] += len(patch)

    def op_truncate(self):
        rel = self.some_file()
        if rel is None:
            return self.op_create()
        size = self.rng.randrange(len(self.files[rel]) + 2000)
        os.truncate(self.p(rel), size)
        old = self.files[rel]
        self.files[rel] = old[:size] + b"\0" * max(0, size - len(old))

    def op_fsync(self):
        d = self.some_dir()
        rel = f"{d}/{self.new_name('s')}".lstrip("/")
        data = self.data()
        t0 = time.monotonic()
        fd = os.open(self.p(rel), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            try:
                os.fsync(fd)
            except OSError as exc:
                # fsync waits out retried failures for op_timeout, then reports them (the
                # data stays queued); a fault phase can last longer than that
                if exc.errno not in (errno.EIO, errno.ETIMEDOUT) or time.monotonic() - t0 < 0.9 * self.op_timeout:
                    raise
                self.stats["fsync_timeouts"] += 1
        finally:
            os.close(fd)
        self.files[rel] = data
        self.stats["fsyncs"] += 1
        self.stats["bytes_written"] += len(data)

    def op_read(self):
        rel = self.some_file()
        if rel is None:
            return
        with open(self.p(rel), "rb") as f:
            got = f.read()
        if got != self.files[rel]:
            self.check(False, f"read {rel}: wrong bytes; " + self.diagnose(rel, got, self.files[rel]))
        self.stats["bytes_read_checked"] += len(got)

    def op_pread(self):
        rel = self.some_file()
        if rel is None or not self.files[rel]:
            return
        want = self.files[rel]
        at = self.rng.randrange(len(want))
        n = self.rng.choice([1, 4096, 100_000])
        fd = os.open(self.p(rel), os.O_RDONLY)
        try:
            got = os.pread(fd, n, at)
        finally:
            os.close(fd)
        if got != want[at:at + n]:
            self.check(False, f"pread {rel} at {at} size {n}: wrong bytes; " + self.diagnose(rel, got, want[at:at + n]))
        self.stats["bytes_read_checked"] += len(got)

    def op_shared(self):
        name = self.rng.choice(sorted(self.shared_model))
        with open(self.shared / name, "rb") as f:
            got = f.read()
        self.check(hashlib.sha256(got).hexdigest() == self.shared_model[name], f"shared {name}: wrong bytes")
        self.stats["bytes_read_checked"] += len(got)

    def op_stat(self):
        rel = self.some_file()
        if rel is None:
            return
        st = os.stat(self.p(rel))
        self.check(st.st_size == len(self.files[rel]), f"stat {rel}: size {st.st_size} != {len(self.files[rel])}")

    def op_listdir(self):
        d = self.some_dir()
        got = sorted(os.listdir(self.p(d)))
        want = sorted({rel.rsplit("/", 1)[-1] for rel in list(self.files) + list(self.dirs)
                       if rel and (rel.rsplit("/", 1)[0] if "/" in rel else "") == d})
        self.check(got == want, f"listdir {d!r}: {got} != {want}")

    def op_rename(self):
        rel = self.some_file()
        if rel is None:
            return
        if self.rng.random() < 0.3 and len(self.files) > 1:
            target = self.rng.choice([f for f in self.files if f != rel])  # onto an existing file
        else:
            target = f"{self.some_dir()}/{self.new_name('r')}".lstrip("/")
        os.rename(self.p(rel), self.p(target))
        self.files[target] = self.files.pop(rel)

    def op_unlink(self):
        rel = self.some_file()
        if rel is None:
            return
        os.unlink(self.p(rel))
        del self.files[rel]

    def op_mkdir(self):
        d = self.some_dir()
        if d.count("/") >= 2:
            return
        rel = f"{d}/{self.new_name('d')}".lstrip("/")
        os.mkdir(self.p(rel))
        self.dirs.add(rel)

    def op_rmdir(self):
        empty = [d for d in self.dirs if d and not any(x.startswith(d + "/") for x in
                                                       list(self.files) + list(self.dirs))]
        if not empty:
            return
        d = self.rng.choice(sorted(empty))
        os.rmdir(self.p(d))
        self.dirs.discard(d)

    def op_rename_dir(self):
        cands = [d for d in self.dirs if d]
        if not cands:
            return
        d = self.rng.choice(sorted(cands))
        parent = d.rsplit("/", 1)[0] if "/" in d else ""
        target = f"{parent}/{self.new_name('m')}".lstrip("/")
        try:
            os.rename(self.p(d), self.p(target))
        except OSError as exc:
            if exc.errno == errno.EBUSY:  # uploads below it in flight for op_timeout: refused, unchanged
                self.stats["refused"] += 1
                return
            raise
        pre = d + "/"
        self.dirs = {target + x[len(d):] if x == d or x.startswith(pre) else x for x in self.dirs}
        self.files = {(target + k[len(d):] if k.startswith(pre) else k): v for k, v in self.files.items()}

    OPS = [("create", 10), ("overwrite", 5), ("append", 5), ("patch", 5), ("truncate", 2), ("fsync", 1),
           ("read", 12), ("pread", 6), ("shared", 4), ("stat", 6), ("listdir", 5), ("rename", 5),
           ("unlink", 4), ("mkdir", 3), ("rmdir", 1), ("rename_dir", 1)]

    def run(self) -> None:
        names = [n for n, _ in self.OPS]
        weights = [w for _, w in self.OPS]
        os.mkdir(self.base)
        while not self.stop.is_set():
            name = self.rng.choices(names, weights)[0]
            phase0 = self.phase.value
            t0 = time.monotonic()
            self.op_paths = []
            ok = False
            try:
                getattr(self, "op_" + name)()
                ok = True
            except PermissionError as exc:
                # the session died (see MountProc.watch_session): nothing was done; the
                # run tolerates these only if the soak had to log in again
                self.stats["auth_refusals"] += 1
                if len(self.auth_examples) < 3:
                    self.auth_examples.append(f"worker {self.wid} {name}: {exc!r}")
            except (OSError, Failure) as exc:
                self.stats["failures"] += 1
                paths = [x for x in self.op_paths if x]
                history = "".join(self.history_of(x.rsplit("/", 1)[-1]) for x in paths[:2])
                if isinstance(exc, Failure) and exc.args and exc.args[0].startswith("listdir"):
                    history += self.history_of_listing(exc.args[0])
                self.failures.append(f"worker {self.wid} {name} {paths[:2]} in phase {phase0}->{self.phase.value} "
                                     f"at {time.time():.3f} after {time.monotonic() - t0:.1f} s: {exc!r}{history}")
                self.resync()
            finally:
                self.trace.append((time.time(), name, tuple(self.op_paths), ok))
            self.stats["ops"] += 1
        self.final_check()

    def history_of_listing(self, message: str) -> str:
        """For a listing that differs: the history of the names that differ."""
        try:
            got_text, want_text = message.split(": ", 1)[1].split(" != ")
            got, want = ast.literal_eval(got_text), ast.literal_eval(want_text)
        except (ValueError, SyntaxError, IndexError):
            return ""
        return "".join(f" [{n}]" + self.history_of(n) for n in sorted(set(got) ^ set(want))[:3])

    def resync(self) -> None:
        """After a failure, adopt what the mount shows so the run can go on (the failure
        is already recorded)."""
        files, dirs = {}, {""}
        for dirpath, dirnames, filenames in os.walk(self.base):
            rel = os.path.relpath(dirpath, self.base)
            rel = "" if rel == "." else rel
            for n in dirnames:
                dirs.add(f"{rel}/{n}".lstrip("/"))
            for n in filenames:
                try:
                    with open(os.path.join(dirpath, n), "rb") as f:
                        files[f"{rel}/{n}".lstrip("/")] = f.read()
                except OSError:
                    pass
        self.files, self.dirs = files, dirs

    def final_check(self) -> None:
        try:
            got = walk(self.base)
            want = {k: hashlib.sha256(v).hexdigest() for k, v in self.files.items()}
            want.update({d: None for d in self.dirs if d})
            if got != want:
                diff = sorted(set(got) ^ set(want))[:10] + [k for k in got if k in want and got[k] != want[k]][:10]
                self.failures.append(f"worker {self.wid} final check through the mount: differs at {diff}")
        except OSError as exc:
            self.failures.append(f"worker {self.wid} final check through the mount failed: {exc!r}")


def walk(root: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        rel = "" if rel == "." else rel
        for n in dirnames:
            out[f"{rel}/{n}".lstrip("/")] = None
        for n in filenames:
            with open(os.path.join(dirpath, n), "rb") as f:
                out[f"{rel}/{n}".lstrip("/")] = hashlib.sha256(f.read()).hexdigest()
    return out


def _worker_main(wid, base, shared, shared_model, seed, phase, stop, out, op_timeout):
    w = Worker(wid, Path(base), Path(shared), shared_model, seed, phase, stop, op_timeout)
    try:
        w.run()
    except BaseException:  # noqa: BLE001
        w.failures.append(f"worker {wid} crashed: {traceback.format_exc()}")
    model = {k: hashlib.sha256(v).hexdigest() for k, v in w.files.items()}
    model.update({d: None for d in w.dirs if d})
    out.put((wid, w.stats, w.failures + w.auth_examples, model, sum(len(v) for v in w.files.values())))


# -- the run ------------------------------------------------------------------------------------
def run(opts) -> dict:
    work = Path(tempfile.mkdtemp(prefix="agavefs-soak-", dir=opts.workdir))
    server = Server(work)
    mount = MountProc(work, server, opts.op_timeout, opts.staging_timeout, opts.verbose)
    order = opts.faults.split(",") if opts.faults else DEFAULT_ORDER
    for name in order:
        if name not in PHASES:
            raise SystemExit(f"unknown fault phase {name!r}; known: {', '.join(PHASES)}")
    summary: dict = {"workdir": str(work), "phases": [], "failures": []}
    workers = []
    ctx = multiprocessing.get_context("fork")
    phase = ctx.Value("i", 0)
    stop = ctx.Event()
    out = ctx.Queue()
    rng = random.Random(opts.seed)
    started = time.monotonic()
    try:
        # a shared directory every worker reads
        shared_dir = server.root / "home" / "demo" / "shared"
        shared_dir.mkdir(parents=True)
        shared_model = {}
        for i in range(8):
            data = rng.randbytes(rng.choice([0, 10, 70_000, 1_000_000]))
            (shared_dir / f"s{i}.bin").write_bytes(data)
            shared_model[f"s{i}.bin"] = hashlib.sha256(data).hexdigest()
        first_args, first_env = PHASES[order[0]]
        server.start(first_args or [], first_env)
        mount.login()
        mount.start()
        mount.watch()
        for wid in range(opts.workers):
            p = ctx.Process(target=_worker_main, args=(wid, str(mount.mountpoint / f"w{wid}"),
                                                        str(mount.mountpoint / "shared"), shared_model,
                                                        opts.seed, phase, stop, out, opts.op_timeout),
                            daemon=True)
            p.start()
            workers.append(p)
        end = started + opts.minutes * 60
        i = 0
        while time.monotonic() < end:
            name = order[i % len(order)]
            phase.value = i
            t0 = time.monotonic()
            length = min(opts.phase_seconds, max(0.5, end - t0))
            if name == "outage":
                server.stop()
                time.sleep(min(opts.outage, length))
                server.start()
                time.sleep(max(0.0, length - opts.outage))
            elif name == "freeze":
                server.freeze()
                time.sleep(min(opts.outage, length))
                server.thaw()
                time.sleep(max(0.0, length - opts.outage))
            else:
                if i > 0:
                    args, env = PHASES[name]
                    server.restart(args, env)
                time.sleep(length)
            summary["phases"].append(name)
            if mount.proc.poll() is not None:
                summary["failures"].append(f"the mount daemon died (status {mount.proc.returncode})")
                break
            for p in workers:
                if not p.is_alive() and p.exitcode:
                    summary["failures"].append(f"a worker died (status {p.exitcode})")
            i += 1
        phase.value = 1000  # calm from here on
        server.restart()
        stop.set()
        results = []
        for _ in workers:
            try:
                results.append(out.get(timeout=opts.op_timeout * 4 + 120))
            except Exception:  # noqa: BLE001
                summary["failures"].append("a worker did not report")
        for p in workers:
            p.join(30)
        totals = {}
        models = {}
        for wid, stats, failures, model, model_bytes in results:
            for k, v in stats.items():
                totals[k] = totals.get(k, 0) + v
            summary["failures"].extend(failures)
            models[wid] = model
            totals["model_bytes"] = totals.get("model_bytes", 0) + model_bytes
        summary["totals"] = totals
        summary["session_relogins"] = mount.relogins
        refusals = totals.get("auth_refusals", 0)
        if not refusals:
            summary["failures"] = [f for f in summary["failures"] if "PermissionError" not in f]
        elif not mount.relogins:
            summary["failures"].append(f"{refusals} operations refused with EACCES while the session was alive")
        else:  # tolerated: the session died (see MountProc.watch) and a new login revived the mount
            summary["failures"] = [f for f in summary["failures"] if "PermissionError" not in f]
        # unmount: waits for every upload; then the server's files must equal the models
        t0 = time.monotonic()
        if not mount.umount():
            summary["failures"].append("umount failed")
        summary["drain_seconds"] = round(time.monotonic() - t0, 1)
        home = server.root / "home" / "demo"
        files_verified = bytes_compared = 0
        for wid, model in models.items():
            got = walk(home / f"w{wid}")
            if got != model:
                missing = sorted(set(model) - set(got))[:10]
                extra = sorted(set(got) - set(model))[:10]
                wrong = [k for k in model if k in got and got[k] != model[k]][:10]
                summary["failures"].append(f"worker {wid}: the server differs from the model: missing {missing}, "
                                           f"extra {extra}, wrong bytes {wrong}")
            files_verified += sum(1 for v in model.values() if v is not None)
        bytes_compared = sum(p.stat().st_size for p in home.rglob("*") if p.is_file())
        leftovers = [str(p.relative_to(home)) for p in home.rglob("*") if HIDDEN in p.name]
        if leftovers:
            summary["failures"].append(f"temporary upload files left on the server: {leftovers[:10]}")
        journal = list((mount.cache / "journal").glob("*.json")) if (mount.cache / "journal").exists() else []
        live = [p for p in journal if not json.loads(p.read_text()).get("cancelled")]
        if live:
            summary["failures"].append(f"{len(live)} journal records of data left after umount")
        # tombstones of cancelled uploads still cleaning up at umount are finished by the next mount
        summary["tombstones_left"] = len(journal) - len(live)
        requests, injected = server.faults()
        log = mount.log.read_text(errors="replace") if mount.log.exists() else ""
        summary.update({
            "minutes": round((time.monotonic() - started) / 60, 2),
            "workers": opts.workers,
            "requests": requests,
            "faults_injected_503": injected,
            "emulator_restarts": server.starts - 1,
            "retries_logged": log.count("retrying "),
            "token_refreshes": log.count("access token refreshed"),
            "files_verified": files_verified,
            "bytes_compared": bytes_compared,
            "lost": len([f for f in summary["failures"] if "differs from the model" in f]),
        })
    finally:
        stop.set()
        for p in workers:
            if p.is_alive():
                p.join(5)
            if p.is_alive():
                p.kill()  # ours, by pid
        mount.cleanup()
        server.stop()
    summary["ok"] = not summary["failures"]
    if summary["ok"] and not opts.keep:
        shutil.rmtree(work, ignore_errors=True)
    return summary


def log_excerpt(log: Path, failures: list[str], before: float = 2.0, after: float = 0.5,
                limit: int = 30) -> str:
    """The mount log's notable lines (warnings, errors with their tracebacks, failed
    filesystem calls) from ``before`` seconds before each failure to ``after`` it."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    records: list[tuple[float, list[str]]] = []
    for line in lines:
        try:
            ts = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            if records:
                records[-1][1].append(line)  # a traceback's continuation
            continue
        records.append((ts, [line]))
    out = []
    for failure in failures[:3]:
        m = re.search(r" at (\d+\.\d+) after", failure)
        if not m:
            continue
        at = float(m.group(1))
        names = [n.rsplit("/", 1)[-1] for n in re.findall(r"'([^']+)'", failure.split(" in phase")[0])]
        near = [(ts, text) for ts, text in records if at - before <= ts <= at + after and " DEBUG " not in text[0]]

        def rank(text: list[str]) -> int:  # its own paths, then tracebacks, failed calls, warnings
            if any(n in text[0] for n in names):
                return 0
            if len(text) > 1 or " ERROR " in text[0]:
                return 1
            return 2 if "agavefs.fuse" in text[0] else 3 if " WARNING " in text[0] else 9

        picked = sorted((r for r in near if rank(r[1]) < 9), key=lambda r: rank(r[1]))[:limit]
        out.append(f"-- {failure[:160]}")
        out.extend(line[:400] for _, text in sorted(picked, key=lambda r: r[0]) for line in text[:25])
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--phase-seconds", type=float, default=None,
                    help="length of a fault phase (default: 20 s, or less for short runs)")
    ap.add_argument("--faults", default="", help="comma-separated phases to cycle through (default: all)")
    ap.add_argument("--outage", type=float, default=3.0, help="seconds the server is stopped or frozen")
    ap.add_argument("--op-timeout", type=float, default=20.0)
    ap.add_argument("--staging-timeout", type=float, default=4.0)
    ap.add_argument("-v", "--verbose", action="count", default=1, help="log level of the mount (default -v)")
    ap.add_argument("--workdir", default=None, help="where the scratch directory goes (default: $TMPDIR)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory even on success")
    ap.add_argument("--json", metavar="FILE", help="also write the summary here")
    opts = ap.parse_args(argv)
    if opts.phase_seconds is None:
        opts.phase_seconds = 20.0 if opts.minutes >= 3 else max(3.0, opts.minutes * 60 / 8)
    if opts.outage >= opts.op_timeout:
        ap.error("--outage must be shorter than --op-timeout (every fault must be absorbed)")
    print(f"soak: seed {opts.seed}, {opts.minutes} min, {opts.workers} workers", file=sys.stderr)

    def on_term(signum, frame):
        raise SystemExit(128 + signum)  # run the cleanup: unmount, stop the emulator

    signal.signal(signal.SIGTERM, on_term)
    summary = run(opts)
    text = json.dumps(summary, indent=2)
    print(text)
    if opts.json:
        Path(opts.json).write_text(text)
    if not summary["ok"]:
        print(f"soak: FAILED; scratch directory kept: {summary['workdir']}", file=sys.stderr)
        excerpt = log_excerpt(Path(summary["workdir"]) / "mount.log", summary["failures"])
        if excerpt:  # what the mount said around each failure (a CI run keeps nothing else)
            print("soak: the mount's log around the failures:\n" + excerpt, file=sys.stderr)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
