"""The official SDK, agavepy 0.9.5, against the emulator over TLS.

agavepy builds its calls from a swagger 1.2 description (agavepy/resources/*.json.j2,
basePath ``https://{netloc of api_server}``), puts path parameters into the URL as
given (so a filePath of "demo/" gives a trailing slash) and sends ``body`` parameters
as JSON (clients.create, files.manage, files.updatePermissions).

Where agavepy and the reference disagree, the reference wins and the test says so.
"""

from __future__ import annotations

import io
import time
import urllib.parse

import pytest
import requests

from agavepy import agave as agavepy_agave  # the official SDK (a declared test dependency)

SYSTEM = "local.storage"


@pytest.fixture
def agave_env(monkeypatch, tmp_path):
    # agavepy writes its credentials cache (~/.agave/current, ~/.agpy) after every token call:
    # keep it away from the real home directory
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AGAVE_CACHE_DIR", str(tmp_path))
    (tmp_path / "home").mkdir()


def make_agave(emu, **kw):
    ag = agavepy_agave.Agave(api_server=emu.url, username="demo", password="demo", verify=emu.ca_file, **kw)
    # agavepy 0.9.5 bug, not a disagreement with the reference: swaggerpy's Authenticator.matches()
    # compares the configured host (api_server's netloc, "127.0.0.1:PORT") with the request URL's
    # *hostname* ("127.0.0.1"), so on any URL with an explicit port it sends no credentials at all.
    # Setting ``host`` to the bare hostname is what makes matches() true.
    ag.host = urllib.parse.urlsplit(emu.url).hostname
    ag.refresh_aris()
    return ag


def wait_staged(ag, path, timeout=15.0):
    deadline = time.monotonic() + timeout
    while True:
        events = [e["status"] for e in ag.files.getHistory(systemId=SYSTEM, filePath=path)]
        if events and events[-1] in ("STAGING_COMPLETED", "STAGING_FAILED"):
            return events
        assert time.monotonic() < deadline, events
        time.sleep(0.1)


def test_agavepy_files_workflow(emulator_factory, agave_env):
    emu = emulator_factory("--tls", users=(("demo", "demo"), ("bob", "bobpw")))
    assert emu.url.startswith("https://")
    ag = make_agave(emu)
    # clients.create (JSON body, Basic auth) -> agavepy then makes a password-grant token itself
    client = ag.clients.create(body={"clientName": "agavepy-test", "description": "sdk"})
    assert client["consumerKey"] and client["consumerSecret"] and client["name"] == "agavepy-test"
    assert ag.token.token_info["access_token"] and ag.token.token_info["refresh_token"]
    assert any(c["name"] == "agavepy-test" for c in ag.clients.list())

    # files.list: entry 0 is "." and lastModified parses as a date-time (agavepy converts it)
    listing = ag.files.list(systemId=SYSTEM, filePath="demo")
    assert listing[0]["name"] == "." and listing[0]["type"] == "dir"
    assert listing[0]["lastModified"].year >= 2000
    assert ag.files.list(systemId=SYSTEM, filePath="demo/")[0]["path"] == "/home/demo"   # trailing slash
    assert ag.files.listOnDefaultSystem(filePath="demo")[0]["path"] == "/home/demo"

    # mkdir through files.manage (JSON body)
    made = ag.files.manage(systemId=SYSTEM, filePath="demo", body={"action": "mkdir", "path": "sdk"})
    assert made["path"] == "/home/demo/sdk"

    # importData: multipart upload, 202 STAGING_QUEUED
    payload = b"uploaded by agavepy\n" * 1000
    f = io.BytesIO(payload)
    f.name = "sdk.txt"
    queued = ag.files.importData(systemId=SYSTEM, filePath="demo/sdk", fileToUpload=f)
    assert queued["status"] == "STAGING_QUEUED" and queued["name"] == "sdk.txt"
    assert wait_staged(ag, "demo/sdk/sdk.txt")[-1] == "STAGING_COMPLETED"
    # agavepy drops a ``fileName`` given with fileToUpload (its MultipartEncoder replaces the
    # form data), so the stored name is always the file object's name; the reference honours
    # fileName, as the plain-requests tests check.

    # download: the raw response
    r = ag.files.download(systemId=SYSTEM, filePath="demo/sdk/sdk.txt")
    assert r.status_code == 200 and r.content == payload

    # rename, copy, move
    renamed = ag.files.manage(systemId=SYSTEM, filePath="demo/sdk/sdk.txt", body={"action": "rename", "path": "r.txt"})
    assert renamed["path"] == "/home/demo/sdk/r.txt"
    ag.files.manage(systemId=SYSTEM, filePath="demo/sdk/r.txt", body={"action": "copy", "path": "demo/copy.txt"})
    ag.files.manage(systemId=SYSTEM, filePath="demo/copy.txt", body={"action": "move", "path": "/home/demo/sdk/moved.txt"})
    names = [e["name"] for e in ag.files.list(systemId=SYSTEM, filePath="demo/sdk")]
    assert names == [".", "moved.txt", "r.txt"]
    assert (emu.home() / "sdk" / "moved.txt").read_bytes() == payload

    # an error answer: agavepy's with_refresh() looks for a gateway ``fault`` in it, finds an
    # Agave envelope instead and re-raises the requests HTTPError; the envelope is in the response
    with pytest.raises(requests.HTTPError) as err:
        ag.files.manage(systemId=SYSTEM, filePath="demo/sdk/r.txt", body={"action": "rename", "path": "moved.txt"})
    envelope = err.value.response.json()
    assert err.value.response.status_code == 400
    assert envelope["status"] == "error" and "already exists" in envelope["message"]

    # history: oldest first, the rename recorded, the DOWNLOAD event present
    history = ag.files.getHistory(systemId=SYSTEM, filePath="demo/sdk/r.txt")
    statuses = [e["status"] for e in history]
    assert statuses[:3] == ["CREATED", "STAGING_QUEUED", "STAGING_COMPLETED"]
    assert "DOWNLOAD" in statuses and statuses[-1] == "RENAME"

    # pems: list, then grant bob READ, and bob can read
    pems = ag.files.listPermissions(systemId=SYSTEM, filePath="demo/sdk")
    assert [p["username"] for p in pems] == ["demo"]
    granted = ag.files.updatePermissions(systemId=SYSTEM, filePath="demo/sdk",
                                         body={"username": "bob", "permission": "READ", "recursive": True})
    assert granted[0]["username"] == "bob" and granted[0]["permission"]["read"] is True
    pems = ag.files.listPermissions(systemId=SYSTEM, filePath="demo/sdk")
    assert [p["username"] for p in pems] == ["demo", "bob"]

    # delete: agavepy returns the (empty) result
    assert ag.files.delete(systemId=SYSTEM, filePath="demo/sdk/moved.txt") is None
    assert [e["name"] for e in ag.files.list(systemId=SYSTEM, filePath="demo/sdk")] == [".", "r.txt"]

    # token refresh: a new pair; the SDK keeps working with it
    before = dict(ag.token.token_info)
    ag.token.refresh()
    assert ag.token.token_info["access_token"] != before["access_token"]
    assert ag.token.token_info["refresh_token"] != before["refresh_token"]
    assert ag.files.list(systemId=SYSTEM, filePath="demo")[0]["name"] == "."


def test_agavepy_refreshes_an_expired_token(emulator_factory, agave_env):
    """agavepy's with_refresh() refreshes on a 401 whose fault message says 'Invalid Credentials'."""
    emu = emulator_factory("--tls", "--token-ttl", "1")
    ag = make_agave(emu)
    ag.clients.create(body={"clientName": "expiry"})
    first = ag.token.token_info["access_token"]
    time.sleep(1.3)
    assert ag.files.list(systemId=SYSTEM, filePath="demo")[0]["name"] == "."
    assert ag.token.token_info["access_token"] != first
