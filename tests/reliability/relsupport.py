"""Helpers shared by the reliability tests: trees, digests, timed operations in
child processes, process states."""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
import os
import random
import subprocess
import time
from pathlib import Path

from helpers import digest_tree

HIDDEN = ".agavefs~"


def run(*cmd, cwd=None, check=True, env=None, timeout=300, input=None):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       env=env, input=input)
    if check:
        assert r.returncode == 0, f"{cmd}: rc={r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r


def make_tree(root: Path, seed: int = 0, files: int = 30, sizes=(0, 1, 100, 4096, 70_000, 300_000)) -> Path:
    """A mixed tree: nested directories, empty files and directories, awkward names."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        d = root / f"d{i % 3}" / f"e{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"file {i} #%?+&.bin").write_bytes(rng.randbytes(rng.choice(sizes)))
    (root / "ünïcödé.txt").write_text("UTF-8 name\n")
    (root / "empty-dir").mkdir(exist_ok=True)
    return root


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def assert_same_tree(a: Path, b: Path) -> None:
    ta, tb = digest_tree(a), digest_tree(b)
    assert ta == tb, (sorted(set(ta) ^ set(tb))[:20],
                      [k for k in ta if k in tb and ta[k] != tb[k]][:20])
    assert not any(HIDDEN in k for k in tb)


def no_hidden(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if HIDDEN in p.name]


def proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    return data.rsplit(")", 1)[1].split()[0]


def _child(fn, args, conn):
    try:
        result = fn(*args)
        conn.send(("ok", result))
    except OSError as exc:
        conn.send(("err", exc.errno))
    except BaseException as exc:  # noqa: BLE001
        conn.send(("exc", repr(exc)))
    finally:
        conn.close()


def timed_ops(ops: dict, limit: float) -> dict:
    """Run every ``name: (fn, args)`` in a child process of its own, all at once.

    -> name: (outcome, value, seconds, states) where outcome is "ok"/"err"(errno)/
    "exc"/"hung", and ``states`` the /proc states seen while it ran (a child stuck
    in D for the whole limit is a hang)."""
    ctx = multiprocessing.get_context("fork")
    running = {}
    for name, (fn, args) in ops.items():
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_child, args=(fn, args, child), daemon=True)
        p.start()
        child.close()
        running[name] = (p, parent, time.monotonic(), [])
    results = {}
    deadline = time.monotonic() + limit
    while running:
        for name, (p, conn, t0, states) in list(running.items()):
            states.append(proc_state(p.pid))
            if conn.poll():
                try:
                    outcome, value = conn.recv()
                except EOFError:
                    outcome, value = "exc", "no answer"
                results[name] = (outcome, value, time.monotonic() - t0, set(s for s in states if s))
                p.join(5)
                del running[name]
            elif not p.is_alive():
                results[name] = ("exc", f"died {p.exitcode}", time.monotonic() - t0, set(s for s in states if s))
                del running[name]
            elif time.monotonic() > deadline:
                results[name] = ("hung", proc_state(p.pid), time.monotonic() - t0, set(s for s in states if s))
                p.kill()  # ours, by pid (SIGKILL also ends an interruptible FUSE wait)
                p.join(5)
                del running[name]
        time.sleep(0.05)
    return results


ERRNO_EIO_OR_TIMEOUT = (errno.EIO, errno.ETIMEDOUT)


# -- small operations run in child processes (module level: picklable under fork too) --------
def op_stat(path):
    os.stat(path)
    return "stat"


def op_listdir(path):
    return sorted(os.listdir(path))


def op_read(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def op_write_close(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return len(data)


def op_write_fsync(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(data)


def op_mkdir(path):
    os.mkdir(path)
    return "mkdir"


def op_rmdir(path):
    os.rmdir(path)
    return "rmdir"


def op_rename(a, b):
    os.rename(a, b)
    return "rename"


def op_unlink(path):
    os.unlink(path)
    return "unlink"


def op_statvfs(path):
    return os.statvfs(path).f_namemax


# -- figures for the closing note (printed at the end of the run) ---------------------
FIGURES: dict[str, int] = {}


def count(**kw: int) -> None:
    for k, v in kw.items():
        FIGURES[k] = FIGURES.get(k, 0) + int(v)


def injected_faults(emu) -> int:
    """503s the emulator answered on purpose (its access log)."""
    return sum(1 for e in emu.access_entries() if e.get("status") == 503)


def requests_served(emu) -> int:
    return len(emu.access_entries())


def verify_tree(expected: Path, actual: Path) -> None:
    """assert_same_tree, counted."""
    assert_same_tree(expected, actual)
    files = [p for p in expected.rglob("*") if p.is_file()]
    count(files_verified=len(files), bytes_compared=sum(p.stat().st_size for p in files))
