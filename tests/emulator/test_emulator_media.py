"""Downloads (ranges, HEAD, headers), uploads (staging, overwrite, names) and history."""

from __future__ import annotations

import os
import time
from email.utils import parsedate_to_datetime

import pytest

from emu_client import Api

DATA = bytes(range(256)) * 40  # 10240 bytes


@pytest.fixture(scope="module")
def blob(sapi: Api) -> str:
    d = sapi.emu.home() / "media"
    d.mkdir()
    (d / "blob.bin").write_bytes(DATA)
    (d / "empty.txt").write_bytes(b"")
    return "demo/media/blob.bin"


def test_download_headers(sapi, blob):
    r = sapi.download(blob)
    assert r.status_code == 200 and r.content == DATA
    assert r.headers["Content-Length"] == str(len(DATA))
    assert r.headers["Accept-Ranges"] == "bytes"
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert "Content-Range" not in r.headers
    mtime = os.stat(sapi.emu.home() / "media" / "blob.bin").st_mtime
    assert abs(parsedate_to_datetime(r.headers["Last-Modified"]).timestamp() - mtime) < 1.5
    assert r.headers["Content-Disposition"].startswith("inline")
    r = sapi.download(blob, params={"force": "true"})
    assert r.headers["Content-Disposition"].startswith("attachment")
    r = sapi.download("demo/media/empty.txt")
    assert r.status_code == 200 and r.content == b"" and r.headers["Content-Type"].startswith("text/plain")


def test_head(sapi, blob):
    before = sapi.events(blob) if sapi.history(blob).status_code == 200 else []
    r = sapi.s.head(sapi.files("media", blob), timeout=30)
    assert r.status_code == 200 and r.content == b""
    assert r.headers["Content-Length"] == str(len(DATA)) and r.headers["Accept-Ranges"] == "bytes"
    after = sapi.events(blob) if sapi.history(blob).status_code == 200 else []
    assert after.count("DOWNLOAD") == before.count("DOWNLOAD")  # HEAD is not a download


def test_directory_download_501(sapi, blob):
    r = sapi.download("demo/media")
    assert r.status_code == 501
    assert r.json()["message"] == "Directory downloads not supported"
    assert sapi.download("demo/media/nope").status_code == 404


def ranged(api, path, header):
    return api.download(path, headers={"Range": header})


def test_range_mode_agave(sapi, blob):
    n = len(DATA)
    r = ranged(sapi, blob, "bytes=0-99")
    assert r.status_code == 200 and r.content == DATA[:100]
    assert r.headers["Content-Range"] == f"bytes 0-99/{n}" and r.headers["Content-Length"] == "100"
    r = ranged(sapi, blob, "bytes=1000-1999")
    assert r.status_code == 200 and r.content == DATA[1000:2000]
    r = ranged(sapi, blob, f"bytes=5000-{n - 1}")
    assert r.status_code == 200 and r.content == DATA[5000:]
    r = ranged(sapi, blob, "bytes=9000-")
    assert r.status_code == 200 and r.content == DATA[9000:]
    assert r.headers["Content-Range"] == f"bytes 9000-{n - 1}/{n}"
    for bad in (f"bytes=0-{n}", f"bytes=5000-{n + 500}", f"bytes={n + 1}-{n + 9}", "bytes=10-5", f"bytes={n}-"):
        r = ranged(sapi, blob, bad)
        assert r.status_code == 416, bad
        assert r.json()["status"] == "error" and r.headers["Content-Range"] == f"bytes */{n}"


@pytest.mark.parametrize("mode", ["rfc", "ignore"])
def test_range_modes_rfc_and_ignore(emulator_factory, mode):
    emu = emulator_factory("--range-mode", mode)
    api = Api(emu)
    (emu.home() / "f").write_bytes(DATA)
    n = len(DATA)
    r = ranged(api, "demo/f", "bytes=10-19")
    if mode == "rfc":
        assert r.status_code == 206 and r.content == DATA[10:20]
        assert r.headers["Content-Range"] == f"bytes 10-19/{n}"
        r = ranged(api, "demo/f", f"bytes=5000-{n + 500}")      # end clamped to EOF
        assert r.status_code == 206 and r.content == DATA[5000:]
        assert r.headers["Content-Range"] == f"bytes 5000-{n - 1}/{n}"
        r = ranged(api, "demo/f", "bytes=-100")                 # suffix
        assert r.status_code == 206 and r.content == DATA[-100:]
        assert ranged(api, "demo/f", f"bytes={n}-").status_code == 416
    else:
        assert r.status_code == 200 and r.content == DATA and "Content-Range" not in r.headers
        r = ranged(api, "demo/f", f"bytes={n + 5}-")
        assert r.status_code == 200 and r.content == DATA


def test_upload_staging_404_then_growing_then_complete(emulator_factory, monkeypatch):
    monkeypatch.setenv("AGAVEFS_EMULATOR_STAGING_BPS", str(1 << 20))  # 1 MiB/s copy
    emu = emulator_factory("--staging-delay", "0.5")
    api = Api(emu)
    payload = os.urandom(1_500_000)
    t0 = time.monotonic()
    r = api.upload("demo", "slow.bin", payload)
    assert r.status_code == 202 and r.json()["result"]["status"] == "STAGING_QUEUED"
    assert api.events("demo/slow.bin")[-1] == "STAGING_QUEUED"
    assert api.list("demo/slow.bin").status_code == 404      # not there before the delay
    lengths = []
    while True:
        r = api.list("demo/slow.bin")
        if r.status_code == 200:
            lengths.append(r.json()["result"][0]["length"])
            if lengths[-1] == len(payload):
                break
        assert time.monotonic() - t0 < 20
        time.sleep(0.05)
    assert time.monotonic() - t0 >= 0.5
    partial = [n for n in lengths if 0 < n < len(payload)]
    assert partial and partial == sorted(partial), lengths  # seen growing in place
    assert api.wait_staged("demo/slow.bin")[-1] == "STAGING_COMPLETED"
    assert api.download("demo/slow.bin").content == payload


def test_overwrite_happens_in_place(emulator_factory, monkeypatch):
    monkeypatch.setenv("AGAVEFS_EMULATOR_STAGING_BPS", str(400_000))
    emu = emulator_factory("--staging-delay", "0.3")
    api = Api(emu)
    target = emu.home() / "over.bin"
    target.write_bytes(b"old" * 1000)
    inode = target.stat().st_ino
    new = os.urandom(400_000)
    assert api.upload("demo", "over.bin", new).status_code == 202
    assert api.download("demo/over.bin").content == b"old" * 1000   # old content until staged
    api.wait_length("demo/over.bin", len(new))
    api.wait_staged("demo/over.bin")
    assert target.read_bytes() == new and target.stat().st_ino == inode
    events = [e for e in api.events("demo/over.bin") if e != "DOWNLOAD"]
    assert events == ["OVERWRITTEN", "STAGING_QUEUED", "STAGING_COMPLETED"]


def test_many_queued_uploads_run_concurrently(emulator_factory):
    emu = emulator_factory("--staging-delay", "1.0")
    api = Api(emu)
    t0 = time.monotonic()
    for i in range(40):
        assert api.upload("demo", f"q{i:02d}", f"file {i}".encode()).status_code == 202
    for i in range(40):
        api.wait_length(f"demo/q{i:02d}", len(f"file {i}"))
    assert time.monotonic() - t0 < 8  # not 40 x 1 s
    assert all((emu.home() / f"q{i:02d}").read_bytes() == f"file {i}".encode() for i in range(40))


def test_upload_names_and_fields(sapi):
    sapi.mkdir("demo", "up")
    r = sapi.upload("demo/up", "ignored.txt", b"named", fileName="chosen.txt")
    assert r.status_code == 202 and r.json()["result"]["name"] == "chosen.txt"
    r = sapi.upload("demo/up", "../../etc/evil.txt", b"stripped")
    assert r.status_code == 202 and r.json()["result"]["path"] == "/home/demo/up/evil.txt"
    r = sapi.upload("demo/up", "C:\\temp\\win.txt", b"win")       # the part's filename: dirs stripped
    assert r.json()["result"]["name"] == "win.txt"
    r = sapi.upload("demo/up", "x", b"back", fileName="back\\slash")  # fileName is the stored name
    assert r.json()["result"]["name"] == "back\\slash"
    r = sapi.upload("demo/up", "x", b"sub", fileName="a/b/last")      # but a name never holds "/"
    assert r.json()["result"]["path"] == "/home/demo/up/last"
    r = sapi.upload("demo/up", "empty.dat", b"")
    assert r.status_code == 202
    for name in ("with space", "hash#1", "pct%25", "q?x", "plus+1", "ünï ☃", "n" * 255):
        r = sapi.upload("demo/up", name, name.encode())
        assert r.status_code == 202, (name, r.text)
        assert r.json()["result"]["name"] == name
    sapi.wait_length("demo/up/empty.dat", 0)
    for name in ("chosen.txt", "evil.txt", "win.txt", "back\\slash", "last", "with space", "hash#1", "ünï ☃",
                 "n" * 255):
        sapi.wait_staged(f"demo/up/{name}")
    home = sapi.emu.home() / "up"
    assert (home / "chosen.txt").read_bytes() == b"named" and (home / "evil.txt").read_bytes() == b"stripped"
    assert (home / "hash#1").read_bytes() == b"hash#1" and (home / ("n" * 255)).exists()
    assert (home / "back\\slash").read_bytes() == b"back" and (home / "last").read_bytes() == b"sub"
    assert sapi.download("demo/up/empty.dat").content == b""
    assert not (sapi.emu.root / "etc").exists()


def test_upload_errors(sapi):
    sapi.mkdir("demo", "uperr")
    (sapi.emu.home() / "uperr" / "afile").write_bytes(b"x")
    r = sapi.upload("demo/uperr/missing", "a", b"x")
    assert r.status_code == 404 and "does not exist" in r.json()["message"]
    r = sapi.upload("demo/uperr/afile", "a", b"x")
    assert r.status_code == 400 and r.json()["message"].endswith("is not a directory")
    r = sapi.upload("demo/uperr", "m" * 256, b"x")          # 256 bytes: too long
    assert r.status_code == 400
    r = sapi.upload("demo/uperr", "é" * 128, b"x")          # 256 bytes of UTF-8
    assert r.status_code == 400
    r = sapi.s.post(sapi.files("media", "demo/uperr"), files={"other": ("a", b"x")}, timeout=30)
    assert r.status_code == 400 and r.json()["message"] == "No file uploaded"
    r = sapi.s.post(sapi.files("media", "demo/uperr"), data=b"--zz\r\nbroken", timeout=30,
                    headers={"Content-Type": "multipart/form-data; boundary=zz"})
    assert r.status_code == 400
    r = sapi.s.post(sapi.files("media", "demo/uperr"), data={"fileName": "x"}, timeout=30)
    assert r.status_code == 400
    r = sapi.upload("demo/uperr", "..", b"x")
    assert r.status_code == 400
    assert sorted(p.name for p in (sapi.emu.home() / "uperr").iterdir()) == ["afile"]
    assert list((sapi.emu.root / ".agave-emulator" / "staging").iterdir()) == []  # temp files removed


def test_history_order_paging_and_download_events(sapi):
    sapi.mkdir("demo", "hist")
    sapi.put_file("demo/hist", "h.txt", b"v1")
    for _ in range(3):
        assert sapi.download("demo/hist/h.txt").status_code == 200
    r = sapi.upload("demo/hist", "h.txt", b"version 2")
    assert r.status_code == 202
    sapi.wait_staged("demo/hist/h.txt")
    events = sapi.events("demo/hist/h.txt")
    assert events == ["CREATED", "STAGING_QUEUED", "STAGING_COMPLETED", "DOWNLOAD", "DOWNLOAD", "DOWNLOAD",
                      "OVERWRITTEN", "STAGING_QUEUED", "STAGING_COMPLETED"]
    first = sapi.history("demo/hist/h.txt", limit=4).json()["result"]
    rest = sapi.history("demo/hist/h.txt", limit=4, offset=4).json()["result"]
    assert [e["status"] for e in first + rest] == events[:8]
    e = first[0]
    assert set(e) >= {"status", "created", "createdBy", "description"} and e["createdBy"] == "demo"
    assert e["created"] <= first[-1]["created"]
    # history follows the file across a rename and a move
    assert sapi.manage("demo/hist/h.txt", "rename", "renamed.txt").status_code == 200
    assert sapi.events("demo/hist/renamed.txt")[:len(events)] == events
    assert sapi.events("demo/hist/renamed.txt")[-1] == "RENAME"
    assert sapi.manage("demo/hist/renamed.txt", "move", "demo/moved.txt").status_code == 200
    assert sapi.events("demo/moved.txt")[-2:] == ["RENAME", "MOVED"]
    r = sapi.history("demo/hist/h.txt")
    assert r.status_code == 404
    (sapi.emu.home() / "hist" / "outside.txt").write_bytes(b"made outside the API")
    r = sapi.history("demo/hist/outside.txt")
    assert r.status_code == 404 and r.json()["message"].startswith("No history found")


def test_download_event_per_get(sapi):
    sapi.put_file("demo", "dl.txt", b"abc")
    n = sapi.events("demo/dl.txt").count("DOWNLOAD")
    sapi.download("demo/dl.txt")
    sapi.download("demo/dl.txt", headers={"Range": "bytes=0-0"})
    assert sapi.events("demo/dl.txt").count("DOWNLOAD") == n + 2
