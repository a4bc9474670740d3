"""A 1 GiB upload and a 1 GiB download keep the client process under 100 MiB RSS.

Each transfer runs in its own subprocess (so the measurement is the client's, not
pytest's) that reports its peak resident set: VmHWM from /proc/self/status is the
number checked.  ru_maxrss is printed too, but Linux carries it across execve, so
in a child of pytest it is at least pytest's own peak at fork time.  Run with -s
to see the numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap

from helpers import REPO

from client_support import write_cli_cache

GIB = 1 << 30
LIMIT_KIB = 100 * 1024

SCRIPT = textwrap.dedent("""
    import hashlib, json, resource, sys, time
    from agavefs.client import AgaveClient, Credentials, StagingState

    def peak_kib():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return 0

    mode, local, remote_dir, name, size = sys.argv[1:6]
    c = AgaveClient(Credentials.load(), op_timeout=60, read_timeout=300)
    t0 = time.monotonic()
    out = {}
    if mode == "up":
        c.upload(local, remote_dir, name)
        out["upload_s"] = time.monotonic() - t0
        state = c.wait_staged(remote_dir + "/" + name, int(size), time.monotonic() + 600,
                              stall_timeout=120)
        out["state"] = state.value
    else:
        h = hashlib.sha256()
        n = 0
        with c.open_stream(remote_dir + "/" + name) as s, open(local, "wb") as f:
            while True:
                chunk = s.read(1 << 20)
                if not chunk:
                    break
                f.write(chunk)
                h.update(chunk)
                n += len(chunk)
        out.update(sha256=h.hexdigest(), bytes=n)
    out.update(seconds=time.monotonic() - t0, vmhwm_kib=peak_kib(),
               ru_maxrss_kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               stats=c.stats.snapshot())
    print(json.dumps(out))
""")


def _make_file(path, size) -> str:
    block = bytearray(os.urandom(1 << 20))
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for i in range(size // len(block)):
            block[:8] = i.to_bytes(8, "big")
            f.write(block)
            h.update(block)
    return h.hexdigest()


def _run(mode, cache, *args) -> dict:
    env = dict(os.environ, AGAVE_CACHE_DIR=str(cache))
    r = subprocess.run([sys.executable, "-c", SCRIPT, mode, *args], capture_output=True, text=True,
                       env=env, cwd=str(REPO), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_one_gib_up_and_down_in_constant_memory(emulator_factory, tmp_path):
    emu = emulator_factory("--staging-delay", "0")
    cache = tmp_path / "cache"
    write_cli_cache(emu, cache)
    src = tmp_path / "big.src"
    digest = _make_file(src, GIB)
    up = _run("up", cache, str(src), "/home/demo", "big.bin", str(GIB))
    print(f"\n1 GiB upload: peak RSS {up['vmhwm_kib'] / 1024:.1f} MiB "
          f"(ru_maxrss {up['ru_maxrss_kib'] / 1024:.1f} MiB), {up['upload_s']:.1f} s to send")
    assert up["state"] == "stored"
    assert up["vmhwm_kib"] < LIMIT_KIB
    assert up["stats"]["bytes_up"] >= GIB
    os.unlink(src)
    dst = tmp_path / "big.dst"
    down = _run("down", cache, str(dst), "/home/demo", "big.bin", str(GIB))
    print(f"1 GiB download: peak RSS {down['vmhwm_kib'] / 1024:.1f} MiB "
          f"(ru_maxrss {down['ru_maxrss_kib'] / 1024:.1f} MiB), {down['seconds']:.1f} s")
    assert down["bytes"] == GIB and down["sha256"] == digest
    assert down["vmhwm_kib"] < LIMIT_KIB
    os.unlink(dst)
