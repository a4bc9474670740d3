"""The server process: concurrency, fault knobs, access log, TLS, signals, restarts."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from emu_client import Api
from helpers import REPO, Emulator, agavefs_cmd, password_token


def test_parallel_uploads_and_downloads(emulator):
    api = Api(emulator)
    blobs = {f"p{i:02d}.bin": os.urandom(200_000 + i * 7919) for i in range(16)}

    def up(name):
        s = requests.Session()
        s.headers.update(api.s.headers)
        r = s.post(api.files("media", "demo"), files={"fileToUpload": (name, blobs[name])}, timeout=60)
        return r.status_code

    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(up, blobs)) == [202] * 16
    for name, data in blobs.items():
        api.wait_length(f"demo/{name}", len(data))
        api.wait_staged(f"demo/{name}")

    def down(name):
        s = requests.Session()
        s.headers.update(api.s.headers)
        return s.get(api.files("media", f"demo/{name}"), timeout=60).content

    with ThreadPoolExecutor(16) as pool:
        got = dict(zip(blobs, pool.map(down, blobs)))
    assert got == blobs
    assert all((emulator.home() / n).read_bytes() == d for n, d in blobs.items())


def test_keep_alive_connections_are_reused(emulator):
    api = Api(emulator)
    api.put_file("demo", "k.txt", b"keep")
    for _ in range(5):
        api.list("demo")
        assert api.download("demo/k.txt").content == b"keep"
    r = api.list("demo")
    assert r.headers.get("Connection", "").lower() != "close"
    # a rejected upload whose body was not read still leaves the connection usable
    assert api.upload("demo/missing", "x", os.urandom(100_000)).status_code == 404
    assert api.list("demo").status_code == 200


def test_fail_rate_answers_503_agave_errors(emulator_factory):
    emu = emulator_factory("--fail-rate", "0.5")
    statuses = []
    for _ in range(60):
        r = requests.post(f"{emu.url}/clients/v2", auth=("demo", "demo"), data={"clientName": "x"}, timeout=30)
        statuses.append(r.status_code)
        if r.status_code == 503:
            body = r.json()
            assert body["status"] == "error" and body["version"] == "2.2.27" and body["message"]
    assert 10 <= statuses.count(503) <= 50, statuses
    assert statuses.count(201) == 1                      # a 503 had no effect...
    assert set(statuses) <= {201, 400, 503}              # ...and later creations say "already exists"
    tokens = [requests.post(f"{emu.url}/token", data={"grant_type": "password"}, timeout=30).status_code
              for _ in range(30)]
    assert 503 in tokens                                 # token calls fail too


def test_fail_rate_one_blocks_everything(emulator_factory):
    emu = emulator_factory("--fail-rate", "1")
    r = requests.post(f"{emu.url}/clients/v2", auth=("demo", "demo"), data={"clientName": "x"}, timeout=30)
    assert r.status_code == 503
    assert requests.get(f"{emu.url}/nothing", timeout=30).status_code == 503
    assert not list(emu.root.glob("home/demo/*"))


def test_latency_is_applied(emulator_factory):
    emu = emulator_factory("--latency", "300")
    t0 = time.monotonic()
    for _ in range(3):
        requests.get(f"{emu.url}/systems/v2", timeout=30)
    assert time.monotonic() - t0 >= 0.9


def test_access_log(emulator):
    api = Api(emulator)
    api.put_file("demo", "log.txt", b"0123456789")
    api.download("demo/log.txt")
    api.s.get(api.files("listings", "demo"), params={"access_token": api.tok["access_token"], "naked": "true",
                                                      "filter": "name"}, timeout=30)
    api.list("demo/with space%")
    emulator.stop()
    entries = emulator.access_entries()
    assert entries
    for e in entries:
        assert {"method", "path", "query", "status", "bytes_in", "bytes_out", "ms"} <= set(e)
        assert isinstance(e["query"], str) and isinstance(e["ms"], (int, float))
    up = next(e for e in entries if e["method"] == "POST" and e["path"].startswith("/files/v2/media"))
    assert up["status"] == 202 and up["bytes_in"] > 10 and up["bytes_out"] > 0
    down = next(e for e in entries if e["method"] == "GET" and e["path"].endswith("/demo/log.txt")
                and "media" in e["path"])
    assert down["status"] == 200 and down["bytes_out"] == 10
    tok = next(e for e in entries if e["path"] == "/token")
    assert tok["status"] == 200 and tok["bytes_in"] > 0
    q = next(e for e in entries if "naked" in e["query"])
    assert "access_token=REDACTED" in q["query"] and "filter=name" in q["query"]
    assert any(e["path"].endswith("/demo/with space%") for e in entries)   # decoded path
    text = emulator.access_log.read_text()
    for secret in (api.tok["access_token"], api.tok["refresh_token"], api.tok["apisecret"], "demo:demo"):
        assert secret not in text
    assert api.tok["access_token"] not in emulator.stderr_text()
    assert api.tok["apisecret"] not in emulator.stderr_text()


def test_tls(emulator_factory):
    emu = emulator_factory("--tls")
    assert emu.url.startswith("https://127.0.0.1:")
    assert emu.ca_file and os.path.isfile(emu.ca_file)
    try:
        requests.get(f"{emu.url}/systems/v2", timeout=30)          # system CAs: must not verify
        raise AssertionError("an unknown CA was accepted")
    except requests.exceptions.SSLError:
        pass
    api = Api(emu)                                                 # verify=CA file
    data = os.urandom(3_000_000)
    api.put_file("demo", "tls.bin", data)
    assert api.download("demo/tls.bin").content == data
    r = api.download("demo/tls.bin", headers={"Range": "bytes=100-199"})
    assert r.status_code == 200 and r.content == data[100:200]
    import ssl, socket                                              # strict X.509 checks pass too
    ctx = ssl.create_default_context(cafile=emu.ca_file)
    ctx.verify_flags |= getattr(ssl, "VERIFY_X509_STRICT", 0)
    with socket.create_connection(("127.0.0.1", emu.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    # a client that never handshakes does not block others
    idle = socket.create_connection(("127.0.0.1", emu.port), timeout=10)
    try:
        assert api.list("demo").status_code == 200
    finally:
        idle.close()


def test_tls_with_given_certificate(emulator_factory, tmp_path):
    from agavefs.emulator.tls import make_certificates
    ca, cert, key = make_certificates(str(tmp_path / "mycerts"), "127.0.0.1")
    emu = emulator_factory("--tls-cert", cert, "--tls-key", key)
    assert emu.ca_file == cert
    r = requests.get(f"{emu.url}/systems/v2", verify=ca, timeout=30)
    assert r.status_code == 401 and "fault" in r.json()


def test_signals_exit_zero(tmp_path):
    for sig in (signal.SIGINT, signal.SIGTERM):
        emu = Emulator(tmp_path / f"r{sig}", log_dir=tmp_path).start()
        assert requests.get(f"{emu.url}/systems/v2", timeout=30).status_code == 401
        assert emu.stop(sig) == 0


def test_restart_same_port_and_staging_failed(emulator_factory):
    emu = emulator_factory("--staging-delay", "30")
    api = Api(emu)
    port = emu.port
    r = api.upload("demo", "lost.bin", b"never staged")
    assert r.status_code == 202
    assert api.events("demo/lost.bin") == ["CREATED", "STAGING_QUEUED"]
    staging = emu.root / ".agave-emulator" / "staging"
    assert len(list(staging.iterdir())) == 1
    emu.restart()                                                  # same port, at once
    assert emu.port == port
    assert api.events("demo/lost.bin") == ["CREATED", "STAGING_QUEUED", "STAGING_FAILED"]
    assert api.list("demo/lost.bin").status_code == 404
    assert list(staging.iterdir()) == []


def test_staging_failure_and_loss_knobs(emulator_factory, monkeypatch):
    monkeypatch.setenv("AGAVEFS_EMULATOR_STAGING_FAIL", "1")
    emu = emulator_factory("--staging-delay", "0")
    api = Api(emu)
    assert api.upload("demo", "f.bin", b"x").status_code == 202
    assert api.wait_staged("demo/f.bin") == ["STAGING_QUEUED", "STAGING_FAILED"]
    monkeypatch.delenv("AGAVEFS_EMULATOR_STAGING_FAIL")
    monkeypatch.setenv("AGAVEFS_EMULATOR_STAGING_LOSE", "1")
    emu2 = emulator_factory("--staging-delay", "0")
    api2 = Api(emu2)
    assert api2.upload("demo", "l.bin", b"x").status_code == 202
    time.sleep(0.5)
    assert api2.events("demo/l.bin") == ["CREATED", "STAGING_QUEUED"]   # lost: nothing ever follows
    assert api2.list("demo/l.bin").status_code == 404


def test_delete_401_quirk_knob(emulator_factory, monkeypatch):
    monkeypatch.setenv("AGAVEFS_EMULATOR_DELETE_401", "1")
    emu = emulator_factory(users=(("demo", "demo"), ("bob", "bobpw")))
    (emu.home("bob") / "b").write_bytes(b"b")
    r = Api(emu).delete("bob/b")
    assert r.status_code == 401 and r.json()["status"] == "error" and "fault" not in r.json()
    assert (emu.home("bob") / "b").exists()


def test_cli_validation_and_help(tmp_path):
    out = subprocess.run(agavefs_cmd("serve", "--help"), capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0
    for opt in ("--root", "--host", "--port", "--user", "--system-id", "--staging-delay", "--token-ttl",
                "--latency", "--fail-rate", "--range-mode", "--max-page", "--access-log", "--tls",
                "--tls-cert", "--tls-key", "--state"):
        assert opt in out.stdout
    for bad in (["--fail-rate", "2"], ["--range-mode", "x"], ["--user", "nopassword"], ["--tls-cert", "x"],
                ["--tls", "--tls-cert", "a", "--tls-key", "b"], ["--max-page", "0"]):
        r = subprocess.run(agavefs_cmd("serve", "--root", str(tmp_path / "r"), *bad), capture_output=True,
                           text=True, cwd=REPO, timeout=60)
        assert r.returncode != 0 and r.stdout == "", bad
    from agavefs.cli.serve import _is_loopback
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("192.168.1.5")


def test_custom_state_file_system_id_and_users(tmp_path):
    state = tmp_path / "elsewhere" / "s.sqlite"
    emu = Emulator(tmp_path / "root", "--state", str(state), "--system-id", "my.sys",
                   users=(("ann", "pw1"), ("ben", "pw2")), log_dir=tmp_path).start()
    try:
        tok = password_token(emu.url, "ann", "pw1")
        h = {"Authorization": f"Bearer {tok['access_token']}"}
        r = requests.get(f"{emu.url}/files/v2/listings/system/my.sys/ann", headers=h, timeout=30)
        assert r.status_code == 200 and r.json()["result"][0]["system"] == "my.sys"
        assert requests.get(f"{emu.url}/files/v2/listings/ann", headers=h, timeout=30).status_code == 200
        assert state.exists() and not (tmp_path / "root" / ".agave-emulator").exists()
        assert sorted(p.name for p in (tmp_path / "root" / "home").iterdir()) == ["ann", "ben"]
        r = requests.post(f"{emu.url}/clients/v2", auth=("demo", "demo"), data={"clientName": "x"}, timeout=30)
        assert r.status_code == 401                                      # no default user when --user given
    finally:
        assert emu.stop() == 0


def test_expect_100_continue(emulator):
    import socket
    api = Api(emulator)
    body = (b"--b\r\nContent-Disposition: form-data; name=\"fileToUpload\"; filename=\"e.txt\"\r\n\r\n"
            b"expected\r\n--b--\r\n")

    def head(path):
        return (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {api.s.headers['Authorization']}\r\n"
                f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {len(body)}\r\n"
                "Expect: 100-continue\r\n\r\n").encode()

    with socket.create_connection(("127.0.0.1", emulator.port), timeout=10) as s:
        s.sendall(head("/files/v2/media/system/local.storage/demo"))
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")  # asked for the body
        s.sendall(body)
        assert b" 202 " in s.recv(65536).split(b"\r\n", 1)[0]
    with socket.create_connection(("127.0.0.1", emulator.port), timeout=10) as s:
        s.sendall(head("/files/v2/media/system/local.storage/demo/missing"))
        reply = b""
        while chunk := s.recv(65536):                 # rejected without asking: closed after the answer
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 404 ") and b"100 Continue" not in reply
    api.wait_length("demo/e.txt", 8)


def _minor_faults(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[7])


def test_request_bodies_reuse_the_servers_memory(emulator):
    """A long-running server keeps the heap memory its request bodies freed (as a real
    Agave's JVM keeps its heap): glibc's default gives it back to the kernel once enough
    is free, and the next MiB of a body faults in fresh zeroed pages (~3 minor faults per
    4 KiB received: 46,000 for a 64 MiB upload, twice the server's CPU for it on a VM
    whose host reclaims freed pages).  Uploads of 64 MiB sent chunked in pieces of
    several sizes (a mount's streamed uploads send what the writer wrote) now each fault
    in a fraction of one page per 4 KiB received."""
    api = Api(emulator)
    boundary = "agavefs-test-boundary"
    blob = os.urandom(2 << 20)
    rnd = random.Random(7)
    pieces = {"1 MiB": [1 << 20] * 64, "128 KiB": [128 << 10] * 512,
              "random": [rnd.randint(4096, 1 << 20) for _ in range(128)], "1 MiB + 13": [(1 << 20) + 13] * 63}

    def body(sizes):  # no length: sent chunked
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"fileToUpload\"; filename=\"big.bin\"\r\n"
               "Content-Type: application/octet-stream\r\n\r\n").encode()
        for n in sizes:
            yield blob[:n]
        yield f"\r\n--{boundary}--\r\n".encode()

    pid = emulator.proc.pid
    api.put_file("demo", "warm.bin", b"x" * 4096)  # the server's first upload sets up what every one needs
    faults = {}
    for round_ in range(2):
        for name, sizes in pieces.items():
            before = _minor_faults(pid)
            r = api.s.post(api.files("media", "demo"), data=body(sizes), timeout=120,
                           headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
            assert r.status_code == 202, r.text
            faults[f"{name} #{round_ + 1}"] = (_minor_faults(pid) - before, sum(sizes))
    assert all(n < size // 4096 // 4 for n, size in faults.values()), faults
    assert api.wait_length("demo/big.bin", sum(pieces["1 MiB + 13"]))["length"] == sum(pieces["1 MiB + 13"])
