#!/usr/bin/env python3
"""Measure the embedded Agave server's transfer throughput with plain ``requests``.

Starts ``agavefs serve`` (port 0, --staging-delay 0) in a subprocess on loopback,
logs in with the tutorial flow, then times, for a SIZE MiB file:

* upload: POST multipart to /files/v2/media (until the 202), once with the body built
  in memory by ``requests`` (``files=``) and once streamed by requests-toolbelt's
  MultipartEncoder; and the time until the background staging copy completes;
* download: GET /files/v2/media streamed with ``iter_content(1 MiB)``.

Usage: python scripts/emulator_throughput.py [--size-mib 256] [--tls] [--repeat 3]
Prints MB/s (10^6 bytes per second) per measurement, best of --repeat.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from requests_toolbelt import MultipartEncoder

REPO = Path(__file__).resolve().parent.parent


def start(root: Path, tls: bool) -> tuple[subprocess.Popen, str, object]:
    cmd = [sys.executable, "-m", "agavefs", "serve", "--root", str(root), "--port", "0",
           "--staging-delay", "0"] + (["--tls"] if tls else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO, text=True)
    url = proc.stdout.readline().strip()
    verify = proc.stdout.readline().strip() if tls else True
    return proc, url, verify


def login(s: requests.Session, url: str) -> None:
    c = s.post(f"{url}/clients/v2", auth=("demo", "demo"), data={"clientName": "bench"}).json()["result"]
    t = s.post(f"{url}/token", auth=(c["consumerKey"], c["consumerSecret"]),
               data={"grant_type": "password", "username": "demo", "password": "demo"}).json()
    s.headers["Authorization"] = "Bearer " + t["access_token"]


def wait_staged(s: requests.Session, url: str, path: str) -> None:
    while True:
        events = s.get(f"{url}/files/v2/history/system/local.storage/{path}?limit=1000").json()["result"]
        last = [e["status"] for e in events][-1]
        if last in ("STAGING_COMPLETED", "STAGING_FAILED"):
            assert last == "STAGING_COMPLETED", events
            return
        time.sleep(0.02)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tls", action="store_true")
    a = ap.parse_args()
    size = a.size_mib << 20
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src.bin"
        block = os.urandom(1 << 20)
        with open(src, "wb") as f:
            for _ in range(a.size_mib):
                f.write(block)
        proc, url, verify = start(Path(tmp) / "root", a.tls)
        try:
            s = requests.Session()
            s.trust_env = False  # REQUESTS_CA_BUNDLE would override Session.verify (requests #3829)
            s.verify = verify
            login(s, url)
            media = f"{url}/files/v2/media/system/local.storage/demo"
            best: dict[str, float] = {}

            def record(name: str, seconds: float) -> None:
                best[name] = max(best.get(name, 0.0), size / seconds / 1e6)

            for i in range(a.repeat):
                name = f"f{i}.bin"
                data = src.read_bytes()
                t0 = time.perf_counter()
                r = s.post(media, files={"fileToUpload": (name, data)})
                t1 = time.perf_counter()
                assert r.status_code == 202, r.text
                del data
                wait_staged(s, url, f"demo/{name}")
                t2 = time.perf_counter()
                record("upload (requests files=, body in memory)", t1 - t0)
                record("upload + staging copy complete", t2 - t0)
                with open(src, "rb") as f:
                    enc = MultipartEncoder(fields={"fileToUpload": (name, f, "application/octet-stream")})
                    t0 = time.perf_counter()
                    r = s.post(media, data=enc, headers={"Content-Type": enc.content_type})
                    record("upload (toolbelt MultipartEncoder, streamed)", time.perf_counter() - t0)
                assert r.status_code == 202, r.text
                wait_staged(s, url, f"demo/{name}")
                t0 = time.perf_counter()
                got = 0
                with s.get(f"{media}/{name}", stream=True) as r:
                    assert r.status_code == 200, r.text
                    for chunk in r.iter_content(1 << 20):
                        got += len(chunk)
                record("download (iter_content 1 MiB)", time.perf_counter() - t0)
                assert got == size
            scheme = "https" if a.tls else "http"
            print(f"{a.size_mib} MiB over {scheme} loopback, best of {a.repeat} (MB/s = 10^6 B/s):")
            for k, v in best.items():
                print(f"  {k:48s} {v:8.0f} MB/s")
        finally:
            proc.terminate()
            proc.wait(15)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
