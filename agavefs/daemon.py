"""The mount daemon: composition of client, backend, VFS and FUSE adapter.

Design note
-----------
The FUSE loop (mfusepy's ``FUSE``, which blocks in libfuse) runs in a thread of its
own so that the main thread keeps Python's signal handling: SIGINT, SIGTERM and
SIGHUP are installed before libfuse starts (libfuse only takes over signals that
are still at their default), and on any of them the main thread drains the upload
queue while the mount keeps serving, then unmounts with ``fusermount3 -u``.
``auto_unmount`` makes the kernel-side mount go away if the process is killed.

Readiness (the mount is live when libfuse calls ``init``) is reported to the
``agavefs mount`` parent through ``--ready-fd`` and to systemd through
``$NOTIFY_SOCKET`` (``Type=notify``).  Errors before that are one sentence on the
same pipe.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from agavefs import control, known_servers, logs
from agavefs.errors import AgaveFSError, AuthError
from agavefs.vfs.reader import CHUNK

log = logging.getLogger("agavefs.mount")


def _notify_systemd(message: str) -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(address)
            s.sendall(message.encode())
    except OSError as exc:
        log.warning("could not notify systemd: %s", exc)


class _Ready:
    def __init__(self, fd: int | None):
        self.fd = fd
        self.event = threading.Event()

    def say(self, text: str) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, text.encode() + b"\n")
            os.close(self.fd)
        except OSError:
            pass
        self.fd = None


def default_cache_dir(username: str, base_url: str, system: str, root: str) -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    key = hashlib.sha256(f"{base_url}\0{username}\0{system}\0{root}".encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{system}{root}").strip("_")[:60]
    return os.path.join(base, "agavefs", f"{slug}-{key}")


def _lock_cache_dir(path: str):
    import fcntl
    os.makedirs(path, mode=0o700, exist_ok=True)
    f = open(os.path.join(path, "lock"), "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def _mounted_dev(mountpoint: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The "major:minor" of the mount on ``mountpoint``, or None when nothing is mounted
    there, read from the kernel's mount table.  Never a stat: the daemon must not send
    requests to its own mount (a SIGKILL while a thread of it waits for its own answer
    leaves a process that cannot exit)."""
    mountpoint = os.path.abspath(mountpoint)  # the parent resolved, not the mount itself
    want = os.path.join(os.path.realpath(os.path.dirname(mountpoint)), os.path.basename(mountpoint))
    found = None
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4:
                    # octal escapes for space, tab, newline and backslash (proc_pid_mountinfo(5))
                    point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
                    if point == want:
                        found = fields[2]  # the last one listed is the one on top
    except OSError:
        return None
    return found


def _raise_readahead(mountpoint: str, kib: int = 1024) -> None:
    """Larger kernel read requests (root only): /sys/class/bdi/<dev>/read_ahead_kb."""
    try:
        dev = _mounted_dev(mountpoint)
        if dev is None:
            return
        path = f"/sys/class/bdi/{dev}/read_ahead_kb"
        with open(path, "w") as f:
            f.write(str(kib))
        log.info("kernel read-ahead of the mount raised to %d KiB", kib)
    except OSError:
        pass


# libfuse's worker threads (-o max_threads=N changes it): as many at most, and as many
# kept when idle (never ended, so each keeps its Python thread state: fuse_ops.py)
FUSE_THREADS = 16

# glibc mallopt(3) parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MALLOC_MMAP_THRESHOLD = 4 * 1024 * 1024
MALLOC_TRIM_THRESHOLD = 64 * 1024 * 1024
MALLOC_ARENAS = 2


def _tune_malloc() -> bool:
    """Keep freed buffers for reuse instead of handing them back to the kernel.

    A sequential read allocates a 1 MiB ``bytes`` per chunk from the socket and frees it
    once the kernel has it; libfuse allocates a buffer per request, and a write copies
    each request's data into a ``bytes``.  With glibc's defaults (a 128 KiB mmap
    threshold that grows to the largest block freed, trimming above twice that) the
    freed memory went back to the kernel and came back as fresh zeroed pages: per 256
    MiB read, 60-80 MiB of page faults (now ~28 MiB: the read-ahead window growing once);
    per 256 MiB written, ~270 MiB (now ~14 MiB).  On a VM each first touch may be a
    fault in the host as well.  The daemon's CPU per byte drops by 15-25%
    (docs/benchmarks.md).  Memory stays bounded by what the mount holds at its peak (the
    read-ahead budget, the caches); only its return to the kernel is lazier.

    And at most MALLOC_ARENAS malloc arenas: glibc gives threads up to 8 per core, and
    each keeps the memory freed in it for its own threads; with libfuse's, the upload,
    page and walk-ahead threads, a walk through big directories left the peak spread
    over many arenas (``du`` over 12 directories of 10,000 entries: 146 MB of RSS with
    glibc's default, 110 MB with 2).  Python allocates under its GIL, so the threads
    hardly contend for an arena.
    True when glibc took the settings."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD) == 1
    ok = mallopt(_M_ARENA_MAX, MALLOC_ARENAS) == 1 and ok
    return mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD) == 1 and ok


def _unmount(mountpoint: str, lazy_after: float = 10.0) -> None:
    fusermount = shutil.which("fusermount3") or "fusermount3"
    deadline = time.monotonic() + lazy_after
    while True:
        r = subprocess.run([fusermount, "-u", mountpoint], capture_output=True, text=True)
        if r.returncode == 0 or _mounted_dev(mountpoint) is None:
            return
        if time.monotonic() > deadline:
            log.warning("%s is busy; unmounting lazily", mountpoint)
            subprocess.run([fusermount, "-uz", mountpoint], capture_output=True)
            return
        time.sleep(0.5)


def build_vfs(args, system, path):
    """Credentials -> client -> backend -> VFS.  Returns (vfs, backend, info)."""
    from agavefs.client import AgaveClient, Credentials
    from agavefs.vfs.agave_backend import AgaveBackend, resolve_root
    from agavefs.vfs.core import VFS
    from agavefs.vfs.options import Options

    creds = Credentials.load(args.agave_cache_dir)
    workers = 16 + args.upload_workers
    client = AgaveClient(creds, system_id=system, ca_bundle=args.ca_bundle, insecure=args.insecure,
                         workers=workers, op_timeout=args.op_timeout)
    root = resolve_root(client, path)
    server = known_servers.server_key(client.base_url, creds.username, client.system_id)
    client.learn_listing_pages(known_servers.load(server).get("listing_pages"))
    backend = AgaveBackend(client, root)
    cache_dir = args.cache_dir or default_cache_dir(creds.username, client.base_url, client.system_id, root)
    opts = Options(attr_ttl=args.attr_ttl, dir_ttl=args.dir_ttl, negative_ttl=args.negative_ttl,
                   uid=args.uid, gid=args.gid, umask=args.umask, read_only=args.read_only,
                   strict=args.strict, cache_dir=cache_dir, cache_max_size=args.cache_max_size,
                   upload_workers=args.upload_workers, sync_close=args.sync_close,
                   staging_timeout=args.staging_timeout, op_timeout=args.op_timeout,
                   walk_ahead=max(0, args.walk_ahead), prefetch_files=max(0, args.prefetch_files))
    lock = _lock_cache_dir(cache_dir)
    if lock is None:  # another daemon owns it: use a private spool, no shared journal
        cache_dir = os.path.join(cache_dir, f"pid-{os.getpid()}")
        lock = _lock_cache_dir(cache_dir)
        opts.cache_dir = cache_dir
    vfs = VFS(backend, opts, cache_dir)
    vfs.lock_file = lock
    # the root's lookup, cached as the kernel's first one will want it (with the entries
    # it brings along: for a small folder, its listing)
    try:
        if not vfs.getattr("/")["st_mode"] & 0o040000:
            raise AgaveFSError(f"{client.system_id}:{root} is a file, not a folder")
    except BaseException:
        vfs.close()
        raise
    info = {"system": client.system_id, "path": root, "base_url": client.base_url,
            "username": creds.username, "cache_dir": cache_dir}
    return vfs, backend, info


def fuse_options(args, info: dict, extra: list[str]) -> dict:
    kw = {
        "fsname": f"agavefs#{info['system']}:{info['path']}",
        "subtype": "agavefs",
        "auto_unmount": True,
        "attr_timeout": args.attr_ttl,
        "entry_timeout": args.attr_ttl,
        "negative_timeout": min(args.negative_ttl, args.attr_ttl),
        "auto_cache": True,
        "default_permissions": True,
        "max_threads": FUSE_THREADS,
        "noatime": True,
        "max_read": CHUNK,  # one read-ahead chunk a request (also set at init: fuse_ops.py)
    }
    if args.read_only:
        kw["ro"] = True
    if args.allow_other:
        kw["allow_other"] = True
    for word in extra:
        key, _, value = word.partition("=")
        kw[key] = value if value else True
    kw["max_idle_threads"] = kw["max_threads"]  # -o max_threads=N included
    return kw


def mount_options(args, extra_fuse_opts) -> dict:
    """The options this mount runs with (after folding ``-o``), for ``agavefs status``."""
    out = {k: v for k, v in vars(args).items()
           if k not in ("target", "options", "ready_fd", "func", "command")
           and isinstance(v, (str, int, float, bool, type(None)))}
    out["fuse"] = list(extra_fuse_opts)
    return out


def mount_error_sentence(exc: AgaveFSError, system: str | None, path: str | None, args) -> str:
    """What went wrong when building the mount, and what to do about it."""
    from agavefs.errors import NotFound, PermissionDenied, TLSError, Transient

    base = "the server"
    try:
        from agavefs.client import Credentials
        base = Credentials.load(args.agave_cache_dir).baseurl or base
    except Exception:  # noqa: BLE001 - only for the message
        pass
    reason = exc.message.split(": ", 1)[1] if ": " in exc.message else exc.message
    where = f"{system or 'your default storage system'}:{path or '(home folder)'}"
    if isinstance(exc, NotFound) and "/systems/v2" in exc.message and system:
        return (f"unknown storage system {system!r} at {base}: check its id, or leave it out to "
                f"mount your default storage system")
    if isinstance(exc, NotFound) and "no storage system" in exc.message:
        return f"{base} offers you no storage system: name one as SYSTEM:PATH"
    if isinstance(exc, NotFound):
        return f"{where} does not exist at {base}: check the path (a leading / is absolute, " \
               f"else it is relative to the system's home folder)"
    if isinstance(exc, TLSError):
        return f"cannot talk to {base} securely: {reason}; give the server's CA with --ca-bundle FILE"
    if isinstance(exc, Transient):
        return (f"cannot reach {base}: {reason.split('; ')[0]}; check the network and that the gateway is up "
                f"(--op-timeout SECONDS waits longer)")
    if isinstance(exc, PermissionDenied):
        return f"permission denied for {where} at {base}: {reason}"
    return f"cannot mount {where}: {exc}"


def run_daemon(args, system, path, mountpoint, extra_fuse_opts) -> int:
    logs.setup(args.verbose, args.log_file, args.log_json)
    if _tune_malloc():
        log.debug("allocator: mmap threshold %d MiB, trim threshold %d MiB, %d arenas",
                  MALLOC_MMAP_THRESHOLD >> 20, MALLOC_TRIM_THRESHOLD >> 20, MALLOC_ARENAS)
    else:
        log.debug("allocator: mallopt not available, the C library's defaults")
    ready = _Ready(args.ready_fd)
    try:
        vfs, backend, info = build_vfs(args, system, path)
    except AuthError as exc:
        ready.say(str(exc) or "not logged in: run 'agavefs login --base-url URL --username NAME'")
        log.error("%s", exc)
        return 1
    except AgaveFSError as exc:
        msg = mount_error_sentence(exc, system, path, args)
        ready.say(msg)
        log.error("%s", msg)
        return 1
    except FileNotFoundError as exc:
        msg = f"not logged in ({exc.filename or exc}): run 'agavefs login --base-url URL --username NAME'"
        ready.say(msg)
        log.error("%s", msg)
        return 1
    except Exception as exc:  # noqa: BLE001 - one sentence for the person; the traceback at -vv
        msg = f"cannot mount: {exc}"
        ready.say(msg)
        log.error("%s", msg, exc_info=args.verbose >= 2)
        return 1

    from agavefs.fuse_ops import AgaveFUSE, AgaveOperations, pinned_threads

    transport = getattr(getattr(backend, "client", None), "transport", None)
    if transport is not None:
        logs.add_redactor(transport.redact)  # knows every token the mount will hold
    recovered = vfs.recover()
    if recovered:
        log.warning("finishing %d uploads left by an earlier mount", recovered)
    started = time.time()
    state = {"force": False, "stop": False}
    ops = AgaveOperations(vfs, on_init=ready.event.set)

    def status(write):
        s = vfs.status()
        s.update(info)
        s.update({"mountpoint": mountpoint, "pid": os.getpid(), "started": started,
                  "uptime": round(time.time() - started, 1), "backend": backend.status(),
                  "options": mount_options(args, extra_fuse_opts), "fuse_threads": pinned_threads()})
        write(s)

    def drain(write):
        vfs.drain(lambda files, size: write({"files": files, "bytes": size}), None, settle=False)
        write({"done": True})

    def force(write):
        state["force"] = True
        write({"ok": True})

    ctl = control.ControlServer(mountpoint, dict(info, mountpoint=mountpoint, pid=os.getpid(),
                                                 started=started),
                                {"status": status, "drain": drain, "force": force})

    def on_signal(signum, frame):
        state["stop"] = True

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    error: list[BaseException] = []

    def run_fuse():
        try:
            AgaveFUSE(ops, mountpoint, foreground=True, **fuse_options(args, info, extra_fuse_opts))
        except BaseException as exc:  # noqa: BLE001 - reported below
            error.append(exc)
            ready.event.set()

    thread = threading.Thread(target=run_fuse, name="agavefs-fuse", daemon=True)
    thread.start()
    while not ready.event.wait(0.2):
        if not thread.is_alive():
            break
    if error or not thread.is_alive():
        msg = f"FUSE could not mount {mountpoint}: {error[0] if error else 'libfuse exited'}"
        ready.say(msg + " (is fuse3 installed and /dev/fuse usable?)")
        log.error("%s", msg)
        ctl.close()
        vfs.close()
        return 1
    _raise_readahead(mountpoint)
    log.info("mounted %s on %s", info["fsname"] if "fsname" in info else
             f"{info['system']}:{info['path']}", mountpoint)
    ready.say("READY")
    _notify_systemd("READY=1\nSTATUS=mounted")

    while thread.is_alive():
        thread.join(0.25)
        if state["stop"]:
            state["stop"] = False
            _notify_systemd("STOPPING=1")
            if not state["force"]:
                _drain(vfs)
            _unmount(mountpoint)
    if not state["force"]:
        _drain(vfs)
    ctl.close()
    vfs.close()
    _remember_server(backend, info)
    left = len(vfs.writeback.pending())
    if left:
        log.warning("%d uploads left in %s; the next mount finishes them", left, vfs.store.root)
    return 0


def _remember_server(backend, info: dict) -> None:
    """Keep what this mount learned about its server for the next mount (known_servers)."""
    client = getattr(backend, "client", None)
    if client is not None and hasattr(client, "listing_pages"):
        key = known_servers.server_key(info["base_url"], info["username"], info["system"])
        known_servers.save(key, {"listing_pages": client.listing_pages()})


def _drain(vfs) -> None:
    def progress(files, size):
        if files:
            log.warning("waiting for %d files (%.1f MiB) to reach the server", files, size / 2**20)
    vfs.drain(progress, None)


__all__ = ["run_daemon", "default_cache_dir", "Path"]
