#!/usr/bin/env python3
"""agavefs benchmark: the mount beside a direct HTTP client and its peers, in one run.

What it does (issue 7)
----------------------
1. Generates a tree once in ``--data-dir`` (reused while its manifest matches):
   ``bench/big256.bin`` (256 MiB) and ``bench/big1g.bin`` (1 GiB) of random bytes,
   ``bench/dir10k/`` (10,000 files of 100 bytes), ``bench/small4k/`` (1,000 files of
   4 KiB), ``bench/tree/`` (9x9x9 directories, 2 files of 1 KiB in each leaf), and
   local sources for the write workloads.  ``--quick`` uses a tiny tree.
2. For each ``--latency`` (default "0,20": loopback and the standard 20 ms remote
   case) starts ``agavefs serve`` over it (``--latency MS --staging-delay 0
   --access-log``), logs in with ``agavefs login`` and, for each run, each
   workload and each tool, measures a COLD variant (fresh mount; page cache dropped
   with ``echo 3 > /proc/sys/vm/drop_caches`` when root) and a WARM one (the same
   mount again; for writes: a mount that has already stored a file).
3. Tools: ``agavefs`` (``agavefs mount --foreground`` in a subprocess, default
   options), ``direct`` (plain ``requests`` against the same server: streamed GET,
   streamed multipart upload with requests-toolbelt then waiting for staging by
   history and listing, paged listings as the mount asks for them (pages of
   ``LIST_PAGE``, fields ``LIST_FIELDS``), ranged GETs; the 1,000 small uploads
   on 4 parallel connections = the mount's --upload-workers default), and with
   ``--peers`` ``rclone`` (``rclone mount`` over ``rclone serve webdav`` of the same
   directory) and ``sshfs`` (over a private sshd on loopback).  At ``--latency`` > 0
   the peers reach their server through a proxy that delays client-to-server bytes
   by that much (one added round trip per request, like the emulator's knob).
4. Counts each workload's HTTP requests from the emulator's access log, samples
   the mount daemon's peak RSS (VmHWM), and writes ``results.json``, ``table.md``
   and ``chart.png`` to the results folder (plus ``docs/benchmarks.md`` for full
   runs), printing the markdown table: median of ``--runs`` with the spread.

Workloads: read256 read1g ttfb random4k write256 small1000 ls10k find du catsmall

Usage::

    sudo /tmp/v/bin/python scripts/bench.py                    # full: 3 runs, 0 and 20 ms
    sudo /tmp/v/bin/python scripts/bench.py --peers            # + rclone and sshfs
    /tmp/v/bin/python scripts/bench.py --quick --runs 1        # smoke run, tiny sizes
    /tmp/v/bin/python scripts/bench.py --workloads ls10k,find --latency 20 --runs 5

Rules kept: only processes started here are killed, by pid; every mount made here
is unmounted (``fusermount3 -u``, then ``-uz``) even on errors or Ctrl-C.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import mmap
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import requests
from requests_toolbelt import MultipartEncoder

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO))  # after PYTHONPATH: an A/B run may put another tree first
# the direct client pages listings as the mount does: the same page size and field projection
from agavefs.client.api import LIST_FIELDS, LIST_PAGE as PAGE  # noqa: E402
MiB = 1 << 20
ALL_WORKLOADS = ["read256", "read1g", "ttfb", "random4k", "write256", "small1000", "ls10k", "find", "du",
                 "catsmall"]
TOOLS = ["agavefs", "direct", "rclone", "sshfs"]
UPLOAD_WORKERS = 4  # the mount's --upload-workers default

FULL = dict(big256=256 * MiB, big1g=1024 * MiB, dir_files=10_000, dir_file_size=100, small_files=1000,
            small_size=4096, tree_fanout=9, tree_depth=3, tree_files=2, tree_file_size=1024,
            random_reads=1000, write_size=256 * MiB)
QUICK = dict(big256=4 * MiB, big1g=12 * MiB, dir_files=300, dir_file_size=100, small_files=30,
             small_size=4096, tree_fanout=3, tree_depth=2, tree_files=2, tree_file_size=1024,
             random_reads=30, write_size=4 * MiB)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def agavefs_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "agavefs", *args]


# ----------------------------------------------------------------------------- data
def generate(data: Path, sizes: dict) -> Path:
    """The tree under data/root/home/demo/bench (generated once) and the local sources."""
    manifest = data / "manifest.json"
    bench = data / "root" / "home" / "demo" / "bench"
    if manifest.exists() and json.loads(manifest.read_text()) == sizes and bench.is_dir():
        return bench
    log(f"generating the tree in {data} (once)")
    if data.exists():
        shutil.rmtree(data)
    bench.mkdir(parents=True)
    rng = random.Random(7)

    def random_file(path: Path, size: int) -> None:
        with open(path, "wb") as f:
            left = size
            while left > 0:
                n = min(left, MiB)
                f.write(os.urandom(n))
                left -= n

    random_file(bench / "big256.bin", sizes["big256"])
    random_file(bench / "big1g.bin", sizes["big1g"])
    d = bench / "dir10k"
    d.mkdir()
    for i in range(sizes["dir_files"]):
        (d / f"f{i:05d}.txt").write_bytes(rng.randbytes(sizes["dir_file_size"]))
    d = bench / "small4k"
    d.mkdir()
    for i in range(sizes["small_files"]):
        (d / f"s{i:04d}.bin").write_bytes(rng.randbytes(sizes["small_size"]))

    def tree(path: Path, depth: int) -> None:
        path.mkdir()
        if depth == 0:
            for j in range(sizes["tree_files"]):
                (path / f"file{j}.dat").write_bytes(rng.randbytes(sizes["tree_file_size"]))
            return
        for i in range(sizes["tree_fanout"]):
            tree(path / f"d{i}", depth - 1)

    tree(bench / "tree", sizes["tree_depth"])
    (bench / "out").mkdir()
    src = data / "src"
    src.mkdir()
    random_file(src / "write.bin", sizes["write_size"])
    (src / "small").mkdir()
    for i in range(sizes["small_files"]):
        (src / "small" / f"n{i:04d}.bin").write_bytes(rng.randbytes(sizes["small_size"]))
    manifest.write_text(json.dumps(sizes))
    return bench


def tree_dirs(sizes: dict) -> int:
    f = sizes["tree_fanout"]
    return sum(f ** k for k in range(sizes["tree_depth"] + 1))


# the backing files (relative to the bench tree) each cold read workload reads
READ_SOURCES = {"read256": ["big256.bin"], "read1g": ["big1g.bin"], "ttfb": ["big256.bin"],
                "random4k": ["big1g.bin"], "cat": ["small4k"], "ls10k": ["dir10k"], "find": ["tree"],
                "du": ["tree"]}


def settle_storage(bench_dir: Path, wl: str) -> None:
    """Read what ``wl`` will read from the server's backing directory, before the
    caches are dropped.

    The machine's disk is virtual: a file not read for a while comes from the host's
    storage at a third of the speed of one read recently, and ``drop_caches`` empties
    only the guest's cache.  Without this, whichever tool read a file first in a run
    paid for the host's cold storage and the next one did not (the bench measures
    agavefs before direct).  Every tool now starts from the same state: nothing in the
    guest's caches, the server's storage settled."""
    for rel in READ_SOURCES.get(wl, []):
        path = bench_dir / rel
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for f in files:
            with open(f, "rb", buffering=0) as fh:
                while fh.read(8 * MiB):
                    pass


# fresh memory a run of each workload may take, in units of the file it moves, for the tool
# that takes the most (see prime_memory).  A read: the server's page cache of the file, the
# mount's page cache of it, buffers.  A write through a mount: the source's page cache, the
# mount's page cache of the file, its spool file's, the server's temporary file and its
# staging copy (5 copies, where the direct client makes 3), buffers; with 4, the mount's cold
# writes paid for fresh memory in the runs that followed the small files' (docs/benchmarks.md)
PRIME_FACTOR = {"read256": ("big256", 3), "read1g": ("big1g", 3), "write256": ("write_size", 8)}


def prime_memory(wl: str, sizes: dict) -> None:
    """Touch, then free, as much anonymous memory as ``wl`` will need fresh, just before
    the caches are dropped.

    The machine is a VM whose free memory goes back to the host a few seconds after it
    is freed (free page reporting): the next first touch of such a page is a fault in the
    host, invisible here but costly (~10 us per 4 KiB, i.e. memory "copies" at ~0.4
    GB/s).  After ``drop_caches`` the guest is all free memory, so a cold run measured
    3 s after the drop was 4x slower for the direct client too (256 MiB: 1.5 GB/s within
    1 s, 0.35-0.42 GB/s after 3 s; scripts and numbers in docs/benchmarks.md), and a tool
    that keeps a page cache of what it reads (the mount) ran out of recently freed pages
    half-way and paid it where the direct client did not.  Pages freed here are reused
    first for a few seconds, so every tool starts from the same state: enough backed free
    memory, as a machine that is not a freshly emptied VM has."""
    key, factor = PRIME_FACTOR.get(wl, (None, 0))
    if not factor:
        return
    n = sizes[key] * factor
    block = b"\1" * (8 * MiB)
    with mmap.mmap(-1, n) as m:
        for off in range(0, n - len(block) + 1, len(block)):
            m.write(block)


# the workloads that are a command over a directory of the tree: (argv, directory)
COMMAND_WORKLOADS = {"ls10k": (["ls", "-l"], "dir10k"), "find": (["find"], "tree"),
                     "du": (["du", "-s"], "tree")}
# the programs that end a write (its unmount), run with harmless arguments by warm_commands
UNMOUNT_COMMANDS = [agavefs_cmd("umount", "--help"), ["fusermount3", "-V"]]


def warm_commands(wl: str) -> None:
    """Start, once, the programs a measurement of ``wl`` runs (``agavefs umount``: a
    Python interpreter and the project's modules; ``fusermount3``; ``ls``, ``find``,
    ``du``, with the workload's own options, over the bench's ``scripts/`` directory),
    just after ``drop_caches``, on paths outside the mounts.

    The direct client each tool is compared with is a process that is already running
    with its modules loaded: without this, a tool paid for reading a program back from
    the virtual disk and the direct client did not (``agavefs umount --help``: 0.09 s
    right after a drop, 0.04 s warm; a cold ``ls -l`` sent its first request to the
    mount 11-13 ms after it started, the direct client 0.6 ms).  Done for every tool
    alike; the mounted data and the server's stay cold."""
    if wl in WRITES:
        commands = UNMOUNT_COMMANDS
    elif wl in COMMAND_WORKLOADS:
        commands = [COMMAND_WORKLOADS[wl][0] + [str(REPO / "scripts")]]
    else:
        commands = []
    for cmd in commands:
        try:
            subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=60, cwd=REPO)
        except (OSError, subprocess.SubprocessError):
            pass


def drop_caches() -> bool:
    if os.geteuid() != 0:
        return False
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen | None, timeout: float = 15) -> None:
    """Terminate one process of ours, by pid."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


# ----------------------------------------------------------------------------- emulator
class Emulator:
    def __init__(self, data: Path, work: Path, latency: float, staging_delay: float):
        self.data, self.work, self.latency = data, work, latency
        self.access_log = work / f"access-{latency:g}ms.jsonl"
        self.state = work / f"state-{latency:g}ms.sqlite"
        cmd = agavefs_cmd("serve", "--root", str(data / "root"), "--port", "0", "--user", "demo:demo",
                          "--latency", str(latency), "--staging-delay", str(staging_delay),
                          "--access-log", str(self.access_log), "--state", str(self.state))
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(work / "emulator.stderr", "ab"),
                                     stdin=subprocess.DEVNULL, cwd=REPO, text=True)
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http"):
            raise RuntimeError(f"the emulator did not start: {(work / 'emulator.stderr').read_text()[-2000:]}")
        self.creds = work / f"creds-{latency:g}"
        self.creds.mkdir(exist_ok=True)
        r = subprocess.run(agavefs_cmd("login", "--base-url", self.url, "--username", "demo", "--password-stdin",
                                       "--client-name", "bench"), input="demo\n", capture_output=True, text=True,
                           env=dict(os.environ, AGAVE_CACHE_DIR=str(self.creds)), timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"agavefs login failed: {r.stderr}")

    def cpu(self) -> float:
        """CPU seconds the server has used so far (user + system)."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def mark(self) -> int:
        try:
            return self.access_log.stat().st_size
        except FileNotFoundError:
            return 0

    def entries(self, since: int, settle: float = 0.15) -> list[dict]:
        time.sleep(settle)  # lines are written when responses end
        with open(self.access_log, "rb") as f:
            f.seek(since)
            return [json.loads(line) for line in f.read().splitlines() if line.strip()]

    def stop(self) -> None:
        stop_process(self.proc)


def classify(entry: dict) -> str:
    path, method = entry["path"], entry["method"]
    if path.startswith("/files/v2/listings"):
        # a lookup: limit=1, or agavefs's limit=100 (a stat that brings 99 entries along)
        query = entry.get("query", "").split("&")
        return "stat" if "limit=1" in query or ("limit=100" in query and "offset=0" in query) else "list"
    if path.startswith("/files/v2/history"):
        return "history"
    if path.startswith("/files/v2/media"):
        return {"GET": "get", "HEAD": "head", "POST": "upload", "PUT": "manage", "DELETE": "delete"}.get(method, method)
    return "other"


def summarize(entries: list[dict]) -> dict:
    kinds: dict[str, int] = {}
    for e in entries:
        k = classify(e)
        kinds[k] = kinds.get(k, 0) + 1
    return {"total": len(entries), "kinds": kinds,
            "bytes_out": sum(e.get("bytes_out", 0) for e in entries),
            "list_paths": len({e["path"] for e in entries if classify(e) == "list"})}


# ----------------------------------------------------------------------------- direct client
class Direct:
    """Plain requests against the emulator: what a user's own script would do."""

    def __init__(self, url: str):
        self.url = url
        s = requests.Session()
        c = s.post(f"{url}/clients/v2", auth=("demo", "demo"), data={"clientName": f"direct-{os.getpid()}"},
                   timeout=60).json()["result"]
        t = s.post(f"{url}/token", auth=(c["consumerKey"], c["consumerSecret"]),
                   data={"grant_type": "password", "username": "demo", "password": "demo",
                         "scope": "PRODUCTION"}, timeout=60).json()
        self.token = t["access_token"]
        self._local = threading.local()

    def session(self, fresh: bool = False) -> requests.Session:
        s = None if fresh else getattr(self._local, "s", None)
        if s is None:
            s = requests.Session()
            s.trust_env = False
            s.headers["Authorization"] = "Bearer " + self.token
            if not fresh:
                self._local.s = s
        return s

    def reset(self) -> None:
        self._local = threading.local()

    def _u(self, service: str, rel: str) -> str:
        return f"{self.url}/files/v2/{service}/system/local.storage/demo/{urllib.parse.quote(rel)}"

    def download(self, rel: str) -> int:
        got = 0
        with self.session().get(self._u("media", rel), stream=True, timeout=120) as r:
            r.raise_for_status()
            for chunk in r.iter_content(MiB):
                got += len(chunk)
        return got

    def ranged(self, rel: str, offset: int, size: int, s: requests.Session | None = None) -> bytes:
        s = s or self.session()
        r = s.get(self._u("media", rel), headers={"Range": f"bytes={offset}-{offset + size - 1}"}, timeout=60)
        r.raise_for_status()
        return r.content

    def listing(self, rel: str) -> list[dict]:
        s, out, offset = self.session(), [], 0
        while True:
            r = s.get(self._u("listings", rel), params={"offset": offset, "limit": PAGE, "filter": LIST_FIELDS},
                      timeout=60)
            r.raise_for_status()
            page = r.json()["result"]
            out.extend(page)
            offset += len(page)
            if len(page) < PAGE:
                return out

    def walk(self, rel: str) -> tuple[int, int]:
        """(entries, bytes) of a tree, one paged listing per directory (find / du)."""
        count = size = 0
        stack = [rel]
        while stack:
            d = stack.pop()
            for e in self.listing(d)[1:]:
                count += 1
                if e["type"] == "dir":
                    stack.append(f"{d}/{e['name']}")
                else:
                    size += e["length"]
        return count, size

    def upload(self, local: Path, rel_dir: str, name: str) -> None:
        with open(local, "rb") as f:
            enc = MultipartEncoder(fields={"fileToUpload": (name, f, "application/octet-stream")})
            r = self.session().post(self._u("media", rel_dir), data=enc, headers={"Content-Type": enc.content_type},
                                    timeout=600)
        if r.status_code != 202:
            raise RuntimeError(f"upload {name}: {r.status_code} {r.text[:200]}")

    def wait_staged(self, rel: str, interval: float = 0.02) -> None:
        """Poll the history until the newest upload's STAGING_COMPLETED."""
        s = self.session()
        while True:
            r = s.get(self._u("history", rel), params={"limit": 1000}, timeout=60)
            if r.status_code == 200:
                statuses = [e["status"] for e in r.json()["result"]]
                q = max((i for i, st in enumerate(statuses) if st == "STAGING_QUEUED"), default=None)
                after = statuses[q + 1:] if q is not None else []
                if "STAGING_FAILED" in after:
                    raise RuntimeError(f"staging of {rel} failed")
                if "STAGING_COMPLETED" in after:
                    return
            time.sleep(interval)

    def stat_length(self, rel: str) -> int:
        r = self.session().get(self._u("listings", rel), params={"limit": 1}, timeout=60)
        r.raise_for_status()
        return r.json()["result"][0]["length"]

    def mkdir(self, rel_parent: str, name: str) -> None:
        r = self.session().put(self._u("media", rel_parent), data={"action": "mkdir", "path": name}, timeout=60)
        r.raise_for_status()

    def delete(self, rel: str) -> None:
        self.session().delete(self._u("media", rel), timeout=300)


# ----------------------------------------------------------------------------- mounts
def is_live_mount(path: str) -> bool:
    try:
        os.statvfs(path)
    except OSError:
        return False
    return os.path.ismount(path)


def force_unmount(path: str) -> None:
    for args in (["-u"], ["-uz"]):
        if not os.path.ismount(path):
            try:
                os.statvfs(path)
                return
            except OSError:
                pass
        subprocess.run(["fusermount3", *args, path], capture_output=True)


class RSS:
    """Samples /proc/PID/status of the mount daemon: peak VmHWM, in MiB."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def sample(self) -> None:
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        self.peak = max(self.peak, int(line.split()[1]) / 1024)
        except (OSError, ValueError):
            pass

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.sample()

    def stop(self) -> float:
        self.sample()
        self._stop.set()
        return self.peak


class FsMount:
    """A filesystem tool: mounts MOUNTPOINT/ showing the demo home (so bench/ is inside)."""

    name = "?"
    rss: RSS | None = None

    def __init__(self, work: Path, tag: str):
        self.work = work
        self.mnt = work / f"mnt-{self.name}-{tag}"
        self.proc: subprocess.Popen | None = None

    def wait_live(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not is_live_mount(str(self.mnt)):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} mount exited {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} mount did not come up: {self.log_tail()}")
            time.sleep(0.02)

    def log_tail(self) -> str:
        return ""

    def sync_and_unmount(self, expect: dict[Path, int]) -> None:
        """Wait until the server has ``expect`` (path in the mount -> size), then unmount."""
        raise NotImplementedError

    def unmount(self) -> None:
        if self.proc is not None and self.proc.poll() is None and is_live_mount(str(self.mnt)):
            subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True)
        if self.proc is not None:
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                stop_process(self.proc)
        force_unmount(str(self.mnt))

    def cleanup(self) -> None:
        try:
            self.unmount()
        finally:
            stop_process(self.proc)
            force_unmount(str(self.mnt))


class AgaveMount(FsMount):
    name = "agavefs"

    def __init__(self, work: Path, tag: str, emu: Emulator, extra: list[str]):
        super().__init__(work, tag)
        self.emu = emu
        self.cache = work / f"cache-{tag}"
        self.log_file = work / f"mount-{tag}.log"
        self.mnt.mkdir(parents=True, exist_ok=True)
        cmd = agavefs_cmd("mount", "--foreground", str(self.mnt), "--cache-dir", str(self.cache),
                          "--log-file", str(self.log_file), *extra)
        # XDG_CACHE_HOME of the run: what a mount keeps about the server for the next one
        # (known_servers.py) is shared by this run's mounts, as on a user's machine
        env = dict(os.environ, AGAVE_CACHE_DIR=str(emu.creds), XDG_CACHE_HOME=str(work / "xdg-cache"))
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(work / "mount.stderr", "ab"))
        self.wait_live()
        self.rss = RSS(self.proc.pid)

    def log_tail(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def sync_and_unmount(self, expect=None) -> None:
        r = subprocess.run(agavefs_cmd("umount", "-q", str(self.mnt)), capture_output=True, text=True,
                           env=dict(os.environ, AGAVE_CACHE_DIR=str(self.emu.creds)), timeout=3600)
        if r.returncode != 0:
            raise RuntimeError(f"agavefs umount failed: {r.stderr}")
        if self.rss:
            self.rss.sample()
        self.proc.wait(60)

    def unmount(self) -> None:
        if self.proc is not None and self.proc.poll() is None and is_live_mount(str(self.mnt)):
            subprocess.run(agavefs_cmd("umount", "-q", str(self.mnt)), capture_output=True, timeout=3600,
                           env=dict(os.environ, AGAVE_CACHE_DIR=str(self.emu.creds)))
        super().unmount()
        shutil.rmtree(self.cache, ignore_errors=True)


class RcloneMount(FsMount):
    """rclone mount :webdav: with a VFS write cache (needed for writes), TTLs as agavefs."""

    name = "rclone"
    OPTIONS = ["--vfs-cache-mode", "writes", "--vfs-write-back", "0s", "--dir-cache-time", "60s",
               "--attr-timeout", "60s", "--transfers", str(UPLOAD_WORKERS), "--webdav-vendor", "rclone"]

    def __init__(self, work: Path, tag: str, url: str, backing: Path):
        super().__init__(work, tag)
        self.backing = backing
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.cache = work / f"rclone-cache-{tag}"
        cmd = ["rclone", "mount", ":webdav:", str(self.mnt), "--webdav-url", url, "--cache-dir", str(self.cache),
               "--config", str(work / "rclone.conf"), *self.OPTIONS]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(work / "rclone-mount.stderr", "ab"))
        self.wait_live()
        self.rss = RSS(self.proc.pid)

    def sync_and_unmount(self, expect: dict[Path, int]) -> None:
        # rclone uploads after close in the background: the data is stored once the
        # server's copy has every byte (rclone's local backend writes in place)
        deadline = time.monotonic() + 3600
        for path, size in expect.items():
            real = self.backing / path.relative_to(self.mnt)
            while True:
                try:
                    if real.stat().st_size == size:
                        break
                except FileNotFoundError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"rclone never stored {real}")
                time.sleep(0.01)
        self.unmount()

    def unmount(self) -> None:
        super().unmount()
        shutil.rmtree(self.cache, ignore_errors=True)


class SshfsMount(FsMount):
    name = "sshfs"
    OPTIONS = "StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,BatchMode=yes,max_conns=4," \
              "Ciphers=aes128-gcm@openssh.com,Compression=no,dcache_timeout=60"

    def __init__(self, work: Path, tag: str, port: int, key: Path, backing: Path):
        super().__init__(work, tag)
        self.mnt.mkdir(parents=True, exist_ok=True)
        cmd = ["sshfs", "-f", f"root@127.0.0.1:{backing}", str(self.mnt), "-p", str(port),
               "-o", f"IdentityFile={key}," + self.OPTIONS]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(work / "sshfs.stderr", "ab"))
        self.wait_live()
        self.rss = RSS(self.proc.pid)

    def sync_and_unmount(self, expect=None) -> None:
        self.unmount()  # sshfs has sent every write when close() returned


# ----------------------------------------------------------------------------- peers' servers
class DelayProxy:
    """TCP proxy adding ``delay`` seconds to client-to-server bytes (one per round trip).

    When either side of a connection ends, both sockets are closed at once: a
    half-open upstream socket would keep receiving into kernel buffers that nobody
    reads (rclone drops a ranged GET after a few KiB), and a thousand of those
    exhaust the kernel's TCP memory."""

    def __init__(self, upstream_port: int, delay: float):
        self.upstream, self.delay = upstream_port, delay
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self._closed = False
        self._lock = threading.Lock()
        self._conns: set = set()  # open (client, upstream) pairs
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                c.close()
                continue
            for s in (c, u):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = (c, u)
            with self._lock:
                self._conns.add(pair)
            q: list = []
            cond = threading.Condition()
            threading.Thread(target=self._read_delayed, args=(c, q, cond), daemon=True).start()
            threading.Thread(target=self._send_delayed, args=(pair, q, cond), daemon=True).start()
            threading.Thread(target=self._pipe, args=(pair,), daemon=True).start()

    def _end(self, pair) -> None:
        with self._lock:
            if pair not in self._conns:
                return
            self._conns.discard(pair)
        for s in pair:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _read_delayed(self, src, q, cond) -> None:
        while True:
            try:
                data = src.recv(1 << 20)
            except OSError:
                data = b""
            with cond:
                q.append((time.monotonic() + self.delay, data))
                cond.notify()
            if not data:
                return

    def _send_delayed(self, pair, q, cond) -> None:
        dst = pair[1]
        while True:
            with cond:
                while not q:
                    cond.wait()
                due, data = q.pop(0)
            left = due - time.monotonic()
            if left > 0:
                time.sleep(left)
            if not data:
                return self._end(pair)
            try:
                dst.sendall(data)
            except OSError:
                return self._end(pair)

    def _pipe(self, pair) -> None:
        src, dst = pair[1], pair[0]
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        while True:
            try:
                n = src.recv_into(buf)
                if n:
                    dst.sendall(view[:n])
            except OSError:
                n = 0
            if not n:
                return self._end(pair)

    def close(self) -> None:
        self._closed = True
        self.sock.close()
        with self._lock:
            pairs = list(self._conns)
        for pair in pairs:
            self._end(pair)


class Peers:
    """rclone serve webdav and a private sshd over the demo home, started once per latency."""

    def __init__(self, work: Path, backing: Path, latency_ms: float):
        self.work, self.backing = work, backing
        self.procs: list[subprocess.Popen] = []
        self.proxies: list[DelayProxy] = []
        self.rclone_url = self.ssh_port = None
        self.notes: list[str] = []
        if shutil.which("rclone"):
            (work / "rclone.conf").write_text("")
            port = free_port()
            p = subprocess.Popen(["rclone", "serve", "webdav", str(backing), "--addr", f"127.0.0.1:{port}",
                                  "--config", str(work / "rclone.conf")], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=open(work / "rclone-serve.stderr", "ab"))
            self.procs.append(p)
            self._wait_port(port, p)
            port = self._proxy(port, latency_ms)
            self.rclone_url = f"http://127.0.0.1:{port}/"
        else:
            self.notes.append("rclone: not installed")
        sshd = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
        if sshd and shutil.which("sshfs") and os.geteuid() == 0:
            self.ssh_port, self.ssh_key = self._start_sshd(sshd)
            self.ssh_port = self._proxy(self.ssh_port, latency_ms)
        else:
            self.notes.append("sshfs: skipped (needs sshfs, openssh-server and root for a private sshd)")

    def _proxy(self, port: int, latency_ms: float) -> int:
        if latency_ms <= 0:
            return port
        proxy = DelayProxy(port, latency_ms / 1000)
        self.proxies.append(proxy)
        return proxy.port

    def _wait_port(self, port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[0]} exited {proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"nothing listens on {port}")

    def _start_sshd(self, sshd: str) -> tuple[int, Path]:
        d = self.work / "sshd"
        d.mkdir(exist_ok=True)
        for name in ("host", "client"):
            if not (d / name).exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
        shutil.copy(d / "client.pub", d / "authorized_keys")
        port = free_port()
        (d / "sshd_config").write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\nPidFile {d / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {d / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            "Subsystem sftp internal-sftp\nLogLevel ERROR\n")
        os.makedirs("/run/sshd", exist_ok=True)
        p = subprocess.Popen([sshd, "-D", "-e", "-f", str(d / "sshd_config")], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=open(self.work / "sshd.stderr", "ab"))
        self.procs.append(p)
        self._wait_port(port, p)
        return port, d / "client"

    def stop(self) -> None:
        for p in self.proxies:
            p.close()
        for p in self.procs:
            stop_process(p)


# ----------------------------------------------------------------------------- workloads
@dataclass
class Ctx:
    bench_rel: str  # "bench" (relative to the demo home)
    data: Path
    sizes: dict
    offsets: list[int]
    tag: str  # unique per measurement (names of written files)


def fs_seq_read(root: Path, ctx: Ctx, name: str) -> tuple[float, dict]:
    path = root / ctx.bench_rel / name
    buf = bytearray(MiB)
    t0 = time.perf_counter()
    got = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            got += n
    dt = time.perf_counter() - t0
    assert got == ctx.sizes["big256" if name == "big256.bin" else "big1g"], (got, name)
    return got / dt / 1e6, {"seconds": dt}


def fs_ttfb(root: Path, ctx: Ctx) -> tuple[float, dict]:
    t0 = time.perf_counter()
    fd = os.open(root / ctx.bench_rel / "big256.bin", os.O_RDONLY)
    try:
        data = os.pread(fd, 4096, 0)
    finally:
        dt = time.perf_counter() - t0
        os.close(fd)
    assert len(data) == 4096
    return dt * 1000, {}


def fs_random(root: Path, ctx: Ctx) -> tuple[float, dict]:
    lat = []
    fd = os.open(root / ctx.bench_rel / "big1g.bin", os.O_RDONLY)
    try:
        t0 = time.perf_counter()
        for off in ctx.offsets:
            t = time.perf_counter()
            data = os.pread(fd, 4096, off)
            lat.append(time.perf_counter() - t)
            assert len(data) == 4096
        dt = time.perf_counter() - t0
    finally:
        os.close(fd)
    return dt, {"per_read_ms": statistics.median(lat) * 1000}


def fs_write(root: Path, ctx: Ctx, mount: FsMount) -> tuple[float, dict]:
    src = ctx.data / "src" / "write.bin"
    dst = root / ctx.bench_rel / "out" / f"w-{ctx.tag}.bin"
    buf = bytearray(MiB)
    t0 = time.perf_counter()
    with open(src, "rb", buffering=0) as fin, open(dst, "wb", buffering=0) as fout:
        while True:
            n = fin.readinto(buf)
            if not n:
                break
            fout.write(memoryview(buf)[:n])
    t1 = time.perf_counter()
    mount.sync_and_unmount({dst: ctx.sizes["write_size"]})
    dt = time.perf_counter() - t0
    return ctx.sizes["write_size"] / dt / 1e6, {"seconds": dt, "close_s": t1 - t0}


def fs_small(root: Path, ctx: Ctx, mount: FsMount) -> tuple[float, dict]:
    srcdir = ctx.data / "src" / "small"
    names = sorted(os.listdir(srcdir))
    blobs = [(n, (srcdir / n).read_bytes()) for n in names]
    dst = root / ctx.bench_rel / "out" / f"s-{ctx.tag}"
    t0 = time.perf_counter()
    dst.mkdir()
    for n, b in blobs:
        with open(dst / n, "wb", buffering=0) as f:
            f.write(b)
    t1 = time.perf_counter()
    mount.sync_and_unmount({dst / n: len(b) for n, b in blobs})
    dt = time.perf_counter() - t0
    return dt, {"close_s": t1 - t0}


def run_cmd(args: list[str]) -> tuple[float, dict]:
    t0 = time.perf_counter()
    r = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=1800)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{args[0]} failed: {r.stderr.decode(errors='replace')[:300]}")
    return dt, {"lines": r.stdout.count(b"\n")}


def fs_cat_small(root: Path, ctx: Ctx) -> tuple[float, dict]:
    d = root / ctx.bench_rel / "small4k"
    t0 = time.perf_counter()
    total = 0
    for n in sorted(os.listdir(d)):
        with open(d / n, "rb") as f:
            total += len(f.read())
    dt = time.perf_counter() - t0
    assert total == ctx.sizes["small_files"] * ctx.sizes["small_size"]
    return dt, {}


def fs_workload(wl: str, root: Path, ctx: Ctx, mount: FsMount) -> tuple[float, dict]:
    b = root / ctx.bench_rel
    if wl == "read256":
        return fs_seq_read(root, ctx, "big256.bin")
    if wl == "read1g":
        return fs_seq_read(root, ctx, "big1g.bin")
    if wl == "ttfb":
        return fs_ttfb(root, ctx)
    if wl == "random4k":
        return fs_random(root, ctx)
    if wl == "write256":
        return fs_write(root, ctx, mount)
    if wl == "small1000":
        return fs_small(root, ctx, mount)
    if wl in COMMAND_WORKLOADS:
        argv, directory = COMMAND_WORKLOADS[wl]
        return run_cmd(argv + [str(b / directory)])
    if wl == "catsmall":
        return fs_cat_small(root, ctx)
    raise ValueError(wl)


def direct_workload(wl: str, d: Direct, ctx: Ctx, cold: bool) -> tuple[float, dict]:
    b = ctx.bench_rel
    if cold:
        d.reset()  # new connections, as a fresh process would open
    if wl in ("read256", "read1g"):
        name = "big256.bin" if wl == "read256" else "big1g.bin"
        t0 = time.perf_counter()
        got = d.download(f"{b}/{name}")
        dt = time.perf_counter() - t0
        return got / dt / 1e6, {"seconds": dt}
    if wl == "ttfb":
        t0 = time.perf_counter()
        data = d.ranged(f"{b}/big256.bin", 0, 4096)
        dt = time.perf_counter() - t0
        assert len(data) == 4096
        return dt * 1000, {}
    if wl == "random4k":
        s, lat = d.session(), []
        t0 = time.perf_counter()
        for off in ctx.offsets:
            t = time.perf_counter()
            assert len(d.ranged(f"{b}/big1g.bin", off, 4096, s)) == 4096
            lat.append(time.perf_counter() - t)
        return time.perf_counter() - t0, {"per_read_ms": statistics.median(lat) * 1000}
    if wl == "write256":
        name = f"w-{ctx.tag}.bin"
        t0 = time.perf_counter()
        d.upload(ctx.data / "src" / "write.bin", f"{b}/out", name)
        d.wait_staged(f"{b}/out/{name}")
        assert d.stat_length(f"{b}/out/{name}") == ctx.sizes["write_size"]
        dt = time.perf_counter() - t0
        return ctx.sizes["write_size"] / dt / 1e6, {"seconds": dt}
    if wl == "small1000":
        srcdir = ctx.data / "src" / "small"
        names = sorted(os.listdir(srcdir))
        rel = f"{b}/out/s-{ctx.tag}"
        t0 = time.perf_counter()
        d.mkdir(f"{b}/out", f"s-{ctx.tag}")
        with concurrent.futures.ThreadPoolExecutor(UPLOAD_WORKERS) as pool:
            list(pool.map(lambda n: d.upload(srcdir / n, rel, n), names))
            list(pool.map(lambda n: d.wait_staged(f"{rel}/{n}"), names))
        lengths = {e["name"]: e["length"] for e in d.listing(rel)[1:]}
        dt = time.perf_counter() - t0
        assert all(lengths.get(n) == ctx.sizes["small_size"] for n in names), "not all stored"
        return dt, {}
    if wl == "ls10k":
        t0 = time.perf_counter()
        n = len(d.listing(f"{b}/dir10k")) - 1
        dt = time.perf_counter() - t0
        assert n == ctx.sizes["dir_files"], n
        return dt, {}
    if wl in ("find", "du"):
        t0 = time.perf_counter()
        d.walk(f"{b}/tree")
        return time.perf_counter() - t0, {}
    if wl == "catsmall":
        s = d.session()
        t0 = time.perf_counter()
        names = [e["name"] for e in d.listing(f"{b}/small4k")[1:]]
        total = 0
        for n in names:
            r = s.get(d._u("media", f"{b}/small4k/{n}"), timeout=60)
            r.raise_for_status()
            total += len(r.content)
        dt = time.perf_counter() - t0
        assert total == ctx.sizes["small_files"] * ctx.sizes["small_size"]
        return dt, {}
    raise ValueError(wl)


WRITES = {"write256", "small1000"}
THROUGHPUT = {"read256", "read1g", "write256"}


def describe(wl: str, sizes: dict) -> str:
    mib = lambda n: f"{n / MiB:.0f} MiB" if n < 1024 * MiB else f"{n / (1024 * MiB):.0f} GiB"  # noqa: E731
    return {
        "read256": f"sequential read {mib(sizes['big256'])} (MB/s)",
        "read1g": f"sequential read {mib(sizes['big1g'])} (MB/s)",
        "ttfb": "time to first byte: open + 4 KiB (ms)",
        "random4k": f"{sizes['random_reads']} random 4 KiB reads (s)",
        "write256": f"write {mib(sizes['write_size'])} until stored (MB/s)",
        "small1000": f"create {sizes['small_files']} x 4 KiB until stored (s)",
        "ls10k": f"ls -l of {sizes['dir_files']} entries (s)",
        "find": f"find over {tree_dirs(sizes)} dirs (s)",
        "du": f"du -s over {tree_dirs(sizes)} dirs (s)",
        "catsmall": f"cat {sizes['small_files']} x 4 KiB files (s)",
    }[wl]


# ----------------------------------------------------------------------------- the runner
@dataclass
class Sample:
    latency: float
    workload: str
    variant: str  # cold | warm
    tool: str
    run: int
    value: float
    extra: dict = field(default_factory=dict)
    requests: dict | None = None
    rss_mib: float | None = None
    error: str | None = None


class Bench:
    def __init__(self, args, sizes: dict, bench_dir: Path, work: Path):
        self.args, self.sizes, self.bench_dir, self.work = args, sizes, bench_dir, work
        self.data = Path(args.data_dir)
        self.samples: list[Sample] = []
        self.notes: list[str] = []
        self.mount_extra = args.mount_opt or []
        rng = random.Random(42)
        blocks = sizes["big1g"] // 4096
        self.offsets = [rng.randrange(blocks) * 4096 for _ in range(sizes["random_reads"])]
        self._seq = 0
        self._active: list[FsMount] = []

    def ctx(self, tool: str) -> Ctx:
        self._seq += 1
        return Ctx("bench", self.data, self.sizes, self.offsets, f"{tool}-{os.getpid()}-{self._seq}")

    def cleanup_written(self) -> None:
        out = self.bench_dir / "out"
        for p in out.iterdir():
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        for p in self.bench_dir.parent.iterdir():  # stray temporary uploads (hidden names)
            if p.name.startswith(".agavefs~"):
                p.unlink(missing_ok=True)

    def _new_mount(self, tool: str, emu: Emulator, peers: Peers | None) -> FsMount:
        self._seq += 1
        tag = f"{emu.latency:g}-{self._seq}"
        if tool == "agavefs":
            m = AgaveMount(self.work, tag, emu, self.mount_extra)
        elif tool == "rclone":
            m = RcloneMount(self.work, tag, peers.rclone_url, self.bench_dir.parent)
        else:
            m = SshfsMount(self.work, tag, peers.ssh_port, peers.ssh_key, self.bench_dir.parent)
        self._active.append(m)
        return m

    def _done(self, m: FsMount) -> float | None:
        peak = m.rss.stop() if m.rss else None
        m.cleanup()
        if m in self._active:
            self._active.remove(m)
        return peak

    def cold_start(self, wl: str) -> None:
        """The same starting state for every tool's cold run of ``wl``: the server's
        storage settled, enough backed free memory, the page cache dropped (and the
        programs the measurement runs loaded again: ``warm_commands``)."""
        settle_storage(self.bench_dir, wl)
        prime_memory(wl, self.sizes)
        if drop_caches():
            warm_commands(wl)

    def warm_start(self, wl: str) -> None:
        """The same starting state for every tool's warm run of ``wl`` (its caches kept):
        a write starts on a quiet disk (not behind the last run's writeback) and with
        enough backed free memory, as a cold one does (``prime_memory``)."""
        if wl in WRITES:
            os.sync()
            prime_memory(wl, self.sizes)

    def measure_fs(self, tool: str, wl: str, emu: Emulator, peers, run: int) -> None:
        counted = tool == "agavefs"
        # cold: fresh mount, caches dropped
        m = self._new_mount(tool, emu, peers)
        # a hung mount must not hang the benchmark: past the limit its daemon (ours) is
        # killed, the blocked call fails and the measurement is recorded as an error
        watchdog = threading.Timer(self.args.timeout, lambda: m.proc and m.proc.poll() is None and m.proc.kill())
        watchdog.daemon = True
        watchdog.start()
        try:
            self.cold_start(wl)
            mark, cpu = emu.mark(), emu.cpu()
            value, extra = fs_workload(wl, m.mnt, self.ctx(tool), m)
            if counted:  # the peers have servers of their own
                extra["server_cpu_s"] = round(emu.cpu() - cpu, 3)
            req = summarize(emu.entries(mark)) if counted else None
            rss = m.rss.peak if m.rss else None
            if m.rss:
                m.rss.sample()
                rss = m.rss.peak
            self.add(emu.latency, wl, "cold", tool, run, value, extra, req, rss)
            if wl in WRITES:  # the mount is gone: warm = a new mount that has stored a file already
                self._done(m)
                m = self._new_mount(tool, emu, peers)
                warm_file = m.mnt / "bench" / "out" / f"warmup-{self._seq}.bin"
                with open(warm_file, "wb") as f:
                    f.write(b"x" * 4096)
                    f.flush()
                    os.fsync(f.fileno())
                if tool == "rclone":
                    self._wait_backing(warm_file, m, 4096)
            # else warm = the same mount, again
            self.warm_start(wl)
            mark, cpu = emu.mark(), emu.cpu()
            value, extra = fs_workload(wl, m.mnt, self.ctx(tool), m)
            if counted:  # the peers have servers of their own
                extra["server_cpu_s"] = round(emu.cpu() - cpu, 3)
            req = summarize(emu.entries(mark)) if counted else None
            if m.rss:
                m.rss.sample()
            self.add(emu.latency, wl, "warm", tool, run, value, extra, req, m.rss.peak if m.rss else None)
        finally:
            watchdog.cancel()
            peak = self._done(m)
            if peak and tool == "agavefs":
                self.samples[-1].rss_mib = max(self.samples[-1].rss_mib or 0, peak)

    def _wait_backing(self, path: Path, m: FsMount, size: int) -> None:
        real = self.bench_dir.parent / path.relative_to(m.mnt)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if real.stat().st_size == size:
                    return
            except FileNotFoundError:
                pass
            time.sleep(0.01)

    def measure_direct(self, d: Direct, wl: str, emu: Emulator, run: int) -> None:
        for variant in ("cold", "warm"):
            if variant == "cold":
                self.cold_start(wl)
            else:
                self.warm_start(wl)
            mark, cpu = emu.mark(), emu.cpu()
            value, extra = direct_workload(wl, d, self.ctx("direct"), variant == "cold")
            extra["server_cpu_s"] = round(emu.cpu() - cpu, 3)
            self.add(emu.latency, wl, variant, "direct", run, value, extra, summarize(emu.entries(mark)))

    def add(self, latency, wl, variant, tool, run, value, extra, req=None, rss=None) -> None:
        extra = dict(extra, load1=round(os.getloadavg()[0], 2))  # the machine is shared: say how busy
        s = Sample(latency, wl, variant, tool, run, value, extra, req, rss)
        self.samples.append(s)
        r = f" requests={req['total']} {req['kinds']}" if req else ""
        m = f" rss={rss:.0f}MiB" if rss else ""
        log(f"{latency:g}ms run{run} {wl:9s} {variant} {tool:8s} {value:10.3f}{r}{m}")

    def run_latency(self, latency: float) -> None:
        log(f"=== latency {latency:g} ms ===")
        emu = Emulator(self.data, self.work, latency, self.args.staging_delay)
        peers = None
        try:
            d = Direct(emu.url)
            tools = ["agavefs", "direct"]
            if self.args.peers:
                peers = Peers(self.work, self.bench_dir.parent, latency)
                self.notes += [f"{latency:g} ms: {n}" for n in peers.notes]
                tools += [t for t, ok in (("rclone", peers.rclone_url), ("sshfs", peers.ssh_port)) if ok]
            for run in range(1, self.args.runs + 1):
                for wl in self.args.workloads:
                    for tool in tools:
                        try:
                            if tool == "direct":
                                self.measure_direct(d, wl, emu, run)
                            else:
                                self.measure_fs(tool, wl, emu, peers, run)
                        except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
                            log(f"ERROR {tool} {wl}: {exc!r}")
                            self.samples.append(Sample(latency, wl, "cold", tool, run, float("nan"),
                                                       error=repr(exc)[:300]))
                            for m in list(self._active):
                                self._done(m)
                        finally:
                            if wl in WRITES:
                                self.cleanup_written()
        finally:
            for m in list(self._active):
                self._done(m)
            if peers:
                peers.stop()
            emu.stop()
            self.cleanup_written()


# ----------------------------------------------------------------------------- report
def med(values: list[float]) -> tuple[float, float, float] | None:
    v = [x for x in values if x == x]
    if not v:
        return None
    return statistics.median(v), min(v), max(v)


def fmt(stat, wl: str) -> str:
    if stat is None:
        return "-"
    m, lo, hi = stat
    digits = 0 if wl in THROUGHPUT else (1 if wl == "ttfb" else 2 if m < 100 else 0)
    if wl == "ttfb" and m >= 100:
        digits = 0
    f = f"{{:.{digits}f}}"
    if lo == hi:
        return f.format(m)
    return f"{f.format(m)} ({f.format(lo)}–{f.format(hi)})"


TARGETS = {  # (workload, variant): (kind, bound)  ratio = agavefs/direct of the row's metric
    ("read256", "cold"): (">=", 0.8), ("read256", "warm"): (">=", 0.8),
    ("read1g", "cold"): (">=", 0.8), ("read1g", "warm"): (">=", 0.8),
    ("write256", "cold"): (">=", 0.8), ("write256", "warm"): (">=", 0.8),
    ("ls10k", "cold"): ("<=", 1.5), ("small1000", "cold"): ("<=", 1.5), ("small1000", "warm"): ("<=", 1.5),
    ("random4k", "cold"): ("<=", 1.5),
    # "time to first byte within 1.5x of a direct ranged GET": per read in the random row,
    # and for a file opened cold here (lookup, open, first read against one ranged GET)
    ("ttfb", "cold"): ("<=", 1.5),
}


def request_cell(wl: str, variant: str, reqs: list[dict], direct: list[dict], sizes: dict) -> tuple[str, str]:
    """(cell text, target verdict) for the agavefs requests of a row."""
    if not reqs:
        return "-", ""
    r = reqs[len(reqs) // 2]
    totals = sorted(x["total"] for x in reqs)
    total = statistics.median(totals)
    kinds = ", ".join(f"{v} {k}" for k, v in sorted(r["kinds"].items(), key=lambda kv: -kv[1]))
    dtot = statistics.median(sorted(x["total"] for x in direct)) if direct else None
    text = f"{total:.0f}" + (f" [{kinds}]" if kinds else "") + (f" / direct {dtot:.0f}" if dtot is not None else "")
    verdict = ""
    if wl == "ls10k" and variant == "warm":
        verdict = "0 req ✓" if total == 0 else f"0 req ✗ ({total:.0f})"
    elif wl == "ls10k" and variant == "cold" and direct:
        # the mount's lookup of the directory ("stat") is a listing request too (its
        # first page of 100): every listing request counts against the direct pages
        pages = statistics.median(x["kinds"].get("list", 0) for x in direct)
        got = statistics.median(x["kinds"].get("list", 0) + x["kinds"].get("stat", 0) for x in reqs)
        verdict = f"pages {got:.0f}/{pages:.0f} " + ("✓" if got <= pages else "✗")
    elif wl in ("find", "du") and variant == "cold":
        dirs = tree_dirs(sizes)
        got = statistics.median(x["kinds"].get("list", 0) for x in reqs)
        verdict = f"{got:.0f} listings/{dirs} dirs " + ("✓" if got <= dirs else "✗")
    elif wl == "random4k" and variant == "cold":
        gets = statistics.median(x["kinds"].get("get", 0) for x in reqs)
        verdict = f"{gets:.0f} GETs/{sizes['random_reads']} reads " + ("✓" if gets <= sizes["random_reads"] else "✗")
    return text, verdict


def build_report(samples: list[Sample], sizes: dict, latencies: list[float], workloads: list[str],
                 tools: list[str]) -> tuple[str, dict]:
    lines: list[str] = []
    summary: dict = {}
    peers = [t for t in ("rclone", "sshfs") if t in tools]
    for lat in latencies:
        label = "loopback (0 ms)" if lat == 0 else f"{lat:g} ms per request"
        lines += [f"### {label}", "",
                  "| workload | agavefs | direct | ratio | " + " | ".join(peers) + (" | " if peers else "")
                  + "requests (agavefs) | targets |",
                  "|---|---|---|---|" + "---|" * len(peers) + "---|---|"]
        for wl in workloads:
            for variant in ("cold", "warm"):
                row = {t: [s for s in samples if s.latency == lat and s.workload == wl and s.variant == variant
                           and s.tool == t] for t in tools}
                stats = {t: med([s.value for s in row[t]]) for t in tools}
                if stats.get("agavefs") is None and stats.get("direct") is None:
                    continue
                ratio = None
                if stats.get("agavefs") and stats.get("direct"):
                    ratio = stats["agavefs"][0] / stats["direct"][0]
                higher_better = wl in THROUGHPUT
                checks = []
                tgt = TARGETS.get((wl, variant))
                if tgt and ratio is not None:
                    ok = ratio >= tgt[1] if tgt[0] == ">=" else ratio <= tgt[1]
                    checks.append(f"{tgt[0]}{tgt[1]}x {'✓' if ok else '✗'}")
                for p in peers:
                    if stats.get(p) and stats.get("agavefs"):
                        a, b = stats["agavefs"][0], stats[p][0]
                        ahead = a > b if higher_better else a < b
                        checks.append(f"vs {p} {'✓' if ahead else '✗'}")
                reqs = [s.requests for s in row["agavefs"] if s.requests]
                dreqs = [s.requests for s in row.get("direct", []) if s.requests]
                rtext, rverdict = request_cell(wl, variant, reqs, dreqs, sizes)
                if rverdict:
                    checks.append(rverdict)
                extra = ""
                per = [s.extra.get("per_read_ms") for s in row["agavefs"] if s.extra.get("per_read_ms")]
                dper = [s.extra.get("per_read_ms") for s in row.get("direct", []) if s.extra.get("per_read_ms")]
                if per and dper:
                    pr = statistics.median(per) / statistics.median(dper)
                    extra = f"; per read {statistics.median(per):.2f} vs {statistics.median(dper):.2f} ms"
                    if variant == "cold":
                        checks.append(f"TTFB {pr:.2f}x {'✓' if pr <= 1.5 else '✗'}")
                cells = [f"{describe(wl, sizes)} {variant}", fmt(stats.get("agavefs"), wl),
                         fmt(stats.get("direct"), wl), f"{ratio:.2f}x" if ratio is not None else "-"]
                cells += [fmt(stats.get(p), wl) for p in peers]
                cells += [rtext + extra, "; ".join(checks)]
                lines.append("| " + " | ".join(cells) + " |")
                summary[f"{lat:g}/{wl}/{variant}"] = {"stats": stats, "ratio": ratio, "checks": checks}
        rss = [s.rss_mib for s in samples if s.latency == lat and s.tool == "agavefs" and s.rss_mib]
        if rss:
            peak = max(rss)
            lines += ["", f"agavefs daemon peak RSS (VmHWM): {peak:.0f} MiB "
                          f"(median over mounts {statistics.median(rss):.0f} MiB); target < 150 MiB "
                          f"{'✓' if peak < 150 else '✗'}"]
            summary[f"{lat:g}/rss"] = peak
        for p in peers:
            rss = [s.rss_mib for s in samples if s.latency == lat and s.tool == p and s.rss_mib]
            if rss:
                lines.append(f"{p} peak RSS: {max(rss):.0f} MiB")
        loads = sorted(s.extra.get("load1") for s in samples if s.latency == lat and s.extra.get("load1") is not None)
        if loads:
            lines.append(f"1-minute load average during these samples: {loads[0]:.1f} / {statistics.median(loads):.1f}"
                         f" / {loads[-1]:.1f} (min / median / max; {os.cpu_count()} cores)")
        errors = [s for s in samples if s.latency == lat and s.error]
        for s in errors:
            lines.append(f"- ERROR {s.tool} {s.workload} run {s.run}: {s.error}")
        lines.append("")
    return "\n".join(lines), summary


def chart(samples: list[Sample], sizes: dict, latencies: list[float], workloads: list[str], tools: list[str],
          path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(latencies), 1, figsize=(12, 4.2 * len(latencies)), squeeze=False)
    shown = [t for t in tools if t != "direct"]
    for ax, lat in zip(axes[:, 0], latencies):
        labels, series = [], {t: [] for t in shown}
        for wl in workloads:
            for variant in ("cold", "warm"):
                vals = {t: med([s.value for s in samples if s.latency == lat and s.workload == wl
                                and s.variant == variant and s.tool == t]) for t in tools}
                if not vals.get("direct"):
                    continue
                labels.append(f"{wl}\n{variant}")
                for t in shown:
                    v = vals.get(t)
                    if v is None:
                        series[t].append(0)
                    else:  # speed relative to direct: >1 is faster than the direct client
                        series[t].append(v[0] / vals["direct"][0] if wl in THROUGHPUT else vals["direct"][0] / v[0])
        width = 0.8 / max(1, len(shown))
        for i, t in enumerate(shown):
            ax.bar([x + i * width for x in range(len(labels))], series[t], width, label=t)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks([x + width * (len(shown) - 1) / 2 for x in range(len(labels))])
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_ylabel("speed relative to direct HTTP (log)")
        ax.set_title("loopback" if lat == 0 else f"{lat:g} ms per request")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--data-dir", help="where the tree is generated once and reused "
                                       "(default /var/tmp/agavefs-bench[-quick])")
    ap.add_argument("--results", help="results folder (default results/bench-<time> in the repo)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    ap.add_argument("--runs", type=int, default=3, help="runs per measurement (median, spread)")
    ap.add_argument("--workloads", default=",".join(ALL_WORKLOADS), help="comma list: " + ",".join(ALL_WORKLOADS))
    ap.add_argument("--latency", default=None, help="comma list of emulator latencies in ms (default 0,20; "
                                                    "--quick: 0)")
    ap.add_argument("--peers", action="store_true", help="also rclone mount and sshfs")
    ap.add_argument("--staging-delay", type=float, default=0.0, help="emulator staging delay (s)")
    ap.add_argument("--mount-opt", action="append", help="extra argument for agavefs mount (repeatable)")
    ap.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    ap.add_argument("--timeout", type=float, default=900, help="seconds one tool may spend on one workload "
                                                               "(cold and warm) before its mount is killed")
    args = ap.parse_args(argv)
    args.workloads = [w for w in args.workloads.split(",") if w]
    bad = [w for w in args.workloads if w not in ALL_WORKLOADS]
    if bad:
        ap.error(f"unknown workloads: {bad}")
    args.latencies = [float(x) for x in (args.latency or ("0" if args.quick else "0,20")).split(",")]
    args.data_dir = args.data_dir or ("/var/tmp/agavefs-bench-quick" if args.quick else "/var/tmp/agavefs-bench")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not (os.path.exists("/dev/fuse") and shutil.which("fusermount3")):
        print("bench: needs /dev/fuse and fusermount3", file=sys.stderr)
        return 2
    sizes = QUICK if args.quick else FULL
    data = Path(args.data_dir)
    bench_dir = generate(data, sizes)
    results = Path(args.results or REPO / "results" / time.strftime("bench-%Y%m%d-%H%M%S"))
    results.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="agavefs-bench-", dir="/var/tmp"))
    bench = Bench(args, sizes, bench_dir, work)
    if os.geteuid() != 0:
        bench.notes.append("not root: page cache not dropped between cold runs; bdi read_ahead_kb not raised")
    stop = {"sig": False}

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    started = time.time()
    try:
        for lat in args.latencies:
            bench.run_latency(lat)
    except KeyboardInterrupt:
        stop["sig"] = True
        log("interrupted: reporting what was measured")
    finally:
        for m in list(bench._active):
            bench._done(m)
    tools = ["agavefs", "direct"] + ([t for t in ("rclone", "sshfs")
                                      if any(s.tool == t for s in bench.samples)] if args.peers else [])
    table, summary = build_report(bench.samples, sizes, args.latencies, args.workloads, tools)
    cmd = "python scripts/bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    head = [f"Command: `{cmd}`  ", f"Date: {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
            f"{args.runs} run(s), median (min–max); ratio = agavefs / direct of the row's unit; "
            f"took {(time.time() - started) / 60:.1f} min.  ", ""]
    notes = [f"- {n}" for n in bench.notes]
    text = "\n".join(head) + table + ("\n" + "\n".join(notes) + "\n" if notes else "")
    (results / "table.md").write_text(text)
    (results / "results.json").write_text(json.dumps({
        "args": {k: v for k, v in vars(args).items()}, "sizes": sizes, "summary": summary,
        "samples": [s.__dict__ for s in bench.samples]}, indent=1, default=str))
    try:
        chart(bench.samples, sizes, args.latencies, args.workloads, tools, results / "chart.png")
    except ImportError:
        log("matplotlib is not installed: no chart (pip install matplotlib)")
    if not args.quick and not args.no_docs and not stop["sig"]:
        write_docs(text, results)
    print(text)
    log(f"results in {results}")
    if not os.environ.get("AGAVEFS_BENCH_KEEP"):  # keep the mount logs for a look
        shutil.rmtree(work, ignore_errors=True)
    else:
        log(f"work folder kept: {work}")
    return 0


BEGIN, END = "<!-- bench:begin (generated by scripts/bench.py) -->", "<!-- bench:end -->"


def write_docs(table: str, results: Path) -> None:
    """docs/benchmarks.md: the generated table goes between the markers; the text
    around them (method, analysis) is kept."""
    doc = REPO / "docs" / "benchmarks.md"
    block = f"{BEGIN}\n{table}\nChart and raw samples: `{results}` (results/ is not committed).\n{END}"
    text = doc.read_text() if doc.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = ("# Benchmarks\n\nProduced by `scripts/bench.py` (its docstring says what each workload "
                "does and how the peers are set up).\n\n" + block + "\n")
    doc.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
