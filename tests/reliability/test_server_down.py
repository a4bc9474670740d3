"""The server stopped (connection refused) or frozen (SIGSTOP: it accepts and never
answers): every operation on the mount ends within a bound set by --op-timeout,
with EIO/ETIMEDOUT or from the cache/spool where that is the contract; nothing
hangs in D state; the mount stays alive; when the server is back, pending uploads
land and the mount works again."""

from __future__ import annotations

import errno
import os
import signal


from relsupport import (ERRNO_EIO_OR_TIMEOUT, op_listdir, op_mkdir, op_read, op_rename, op_rmdir, op_stat,
                        op_statvfs, op_unlink, op_write_close, op_write_fsync, proc_state, timed_ops)

OP_TIMEOUT = 4.0
# every operation below needs at most one FUSE request that waits for the server
BOUND = OP_TIMEOUT + 4.0
OPS = ("stat", "ls", "read", "new", "over", "fsync", "mkdir", "rename", "unlink", "rmdir", "mvdir", "mvto", "spooled")


def _prepare(emu, tag):
    h = emu.home()
    for op in OPS:  # one directory per operation: the kernel serialises changes in one directory
        (h / f"{op}-{tag}").mkdir()
        (h / f"{op}-{tag}" / "file.txt").write_bytes(f"{op} {tag} ".encode() * 1000)
    # "uncached" paths are two levels below any directory listed: walk-ahead lists
    # the subdirectories of a listed directory (sub), never deeper
    (h / f"ls-{tag}" / "sub" / "deeper").mkdir(parents=True)
    (h / f"rmdir-{tag}" / "empty").mkdir()
    (h / f"mvdir-{tag}" / "moving").mkdir()
    (h / f"stat-{tag}" / "sub" / "deeper").mkdir(parents=True)
    (h / f"stat-{tag}" / "sub" / "deeper" / "a.txt").write_bytes(b"a" * 5000)


def _cache_listings(m, tag):
    os.listdir(m.path)
    for op in OPS:
        os.listdir(m.path / f"{op}-{tag}")


def _ops(m, tag):
    d = {op: m.path / f"{op}-{tag}" for op in OPS}
    return {
        "stat uncached": (op_stat, (str(d["stat"] / "sub" / "deeper" / "a.txt"),)),
        "ls uncached": (op_listdir, (str(d["ls"] / "sub" / "deeper"),)),
        "read uncached": (op_read, (str(d["read"] / "file.txt"),)),
        "write+close new": (op_write_close, (str(d["new"] / "new.txt"), b"spooled new " * 100)),
        "write+close over": (op_write_close, (str(d["over"] / "file.txt"), b"spooled over " * 100)),
        "fsync": (op_write_fsync, (str(d["fsync"] / "synced.txt"), b"must not be acked")),
        "mkdir": (op_mkdir, (str(d["mkdir"] / "newdir"),)),
        "rename": (op_rename, (str(d["rename"] / "file.txt"), str(d["rename"] / "file2.txt"))),
        "unlink": (op_unlink, (str(d["unlink"] / "file.txt"),)),
        "rmdir": (op_rmdir, (str(d["rmdir"] / "empty"),)),
        "mv dir across": (op_rename, (str(d["mvdir"] / "moving"), str(d["mvto"] / "moved"))),
        "read spooled": (op_read, (str(d["spooled"] / "pending.txt"),)),
        "ls cached": (op_listdir, (str(d["read"]),)),
        "statvfs": (op_statvfs, (str(m.path),)),
    }


def _check(results, m, tag):
    report = {k: (v[0], errno.errorcode.get(v[1], v[1]) if v[0] == "err" else v[1], round(v[2], 1))
              for k, v in results.items()}
    print(f"\nserver {tag}:", "; ".join(f"{k}: {v}" for k, v in report.items()))
    for name, (outcome, value, seconds, states) in results.items():
        assert outcome != "hung", (name, report)
        assert seconds < BOUND, (name, report)
        if name.startswith("write+close") or name in ("statvfs", "read spooled", "ls cached"):
            assert outcome == "ok", (name, report)  # from the spool or the cache
        else:
            assert outcome == "err" and value in ERRNO_EIO_OR_TIMEOUT, (name, report)
    assert m.proc.poll() is None and proc_state(m.proc.pid) != "D"
    os.statvfs(m.path)


def _down_then_back(emulator_factory, mount_factory, freeze: bool):
    emu = emulator_factory("--staging-delay", "0.2")
    tag = "frozen" if freeze else "stopped"
    _prepare(emu, tag)
    m = mount_factory(emu, "--op-timeout", str(OP_TIMEOUT))
    _cache_listings(m, tag)
    if freeze:
        os.kill(emu.proc.pid, signal.SIGSTOP)  # the emulator we started, by pid
    else:
        emu.stop()
    try:
        # written while the server is away: spool only, its upload pending
        (m.path / f"spooled-{tag}" / "pending.txt").write_bytes(b"written during the outage")
        results = timed_ops(_ops(m, tag), limit=BOUND + 20)
        _check(results, m, tag)
        # the daemon itself is not stuck in D
        assert m.proc.poll() is None
    finally:
        if freeze:
            os.kill(emu.proc.pid, signal.SIGCONT)
    if freeze:
        emu.restart()
    else:
        emu.start()  # same port (Emulator keeps it)
    # the mount works again
    assert (m.path / f"read-{tag}" / "file.txt").read_bytes() == f"read {tag} ".encode() * 1000
    assert os.listdir(m.path / f"ls-{tag}" / "sub" / "deeper") == []
    assert (m.path / f"stat-{tag}" / "sub" / "deeper" / "a.txt").read_bytes() == b"a" * 5000
    # a frozen server still holds the requests it accepted: once thawed it may carry out
    # the mkdir, rename and unlink that timed out (ETIMEDOUT = outcome unknown)
    try:
        os.mkdir(m.path / f"mkdir-{tag}" / "newdir")
    except FileExistsError:
        # made by the thawed server; the kernel may keep its negative entry until
        # --negative-ttl passes, so it is checked on the server at the end
        assert freeze
    try:
        os.rename(m.path / f"rename-{tag}" / "file.txt", m.path / f"rename-{tag}" / "file2.txt")
    except FileNotFoundError:
        assert freeze  # done by the thawed server
    try:
        os.unlink(m.path / f"unlink-{tag}" / "file.txt")
    except FileNotFoundError:
        assert freeze
    try:
        os.rmdir(m.path / f"rmdir-{tag}" / "empty")
    except FileNotFoundError:
        assert freeze
    try:
        os.rename(m.path / f"mvdir-{tag}" / "moving", m.path / f"mvto-{tag}" / "moved")
    except FileNotFoundError:
        assert freeze
    (m.path / f"after-{tag}.txt").write_bytes(b"after")
    r = m.umount()
    assert r.returncode == 0, r.stderr + m.log_tail()
    h = emu.home()
    assert (h / f"new-{tag}" / "new.txt").read_bytes() == b"spooled new " * 100
    assert (h / f"over-{tag}" / "file.txt").read_bytes() == b"spooled over " * 100
    # a failed fsync does not drop the data: it lands once the server is back
    assert (h / f"fsync-{tag}" / "synced.txt").read_bytes() == b"must not be acked"
    assert (h / f"mkdir-{tag}" / "newdir").is_dir()
    assert (h / f"spooled-{tag}" / "pending.txt").read_bytes() == b"written during the outage"
    assert sorted(os.listdir(h / f"rename-{tag}")) == ["file2.txt"]
    assert os.listdir(h / f"unlink-{tag}") == []
    assert os.listdir(h / f"rmdir-{tag}") == ["file.txt"]
    assert sorted(os.listdir(h / f"mvto-{tag}")) == ["file.txt", "moved"]
    assert os.listdir(h / f"mvdir-{tag}") == ["file.txt"]
    assert (emu.home() / f"after-{tag}.txt").read_bytes() == b"after"
    return m


def test_server_stopped(emulator_factory, mount_factory):
    _down_then_back(emulator_factory, mount_factory, freeze=False)


def test_server_frozen(emulator_factory, mount_factory):
    _down_then_back(emulator_factory, mount_factory, freeze=True)
