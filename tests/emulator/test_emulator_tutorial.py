"""The tutorial flow this project was born from, end to end, with plain requests."""

from __future__ import annotations

import os
import time

import requests


def test_tutorial_flow(emulator):
    url = emulator.url
    # 1. create an OAuth client with the user's password
    r = requests.post(f"{url}/clients/v2", auth=("demo", "demo"), data={"clientName": "tutorial"}, timeout=30)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] == "success" and body["version"] == "2.2.27"
    assert body["message"] == "Client created successfully."
    client = body["result"]
    assert client["name"] == "tutorial" and client["consumerKey"] and client["consumerSecret"]
    assert set(client["_links"]) == {"self", "subscriber", "subscriptions"}
    # 2. password grant: bare OAuth JSON, no envelope
    r = requests.post(f"{url}/token", auth=(client["consumerKey"], client["consumerSecret"]),
                      data={"grant_type": "password", "username": "demo", "password": "demo",
                            "scope": "PRODUCTION"}, timeout=30)
    assert r.status_code == 200, r.text
    tok = r.json()
    assert "status" not in tok
    assert tok["token_type"] == "bearer" and tok["expires_in"] == 14400
    assert tok["access_token"] and tok["refresh_token"] and "scope" in tok
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {tok['access_token']}"
    # 3. who am I
    r = s.get(f"{url}/profiles/v2/me", timeout=30)
    assert r.status_code == 200
    me = r.json()["result"]
    assert me["username"] == "demo"
    for key in ("email", "first_name", "last_name", "full_name", "create_time", "phone", "mobile_phone", "status"):
        assert key in me
    # 4. list the home: entry 0 is the directory itself
    home = f"{url}/files/v2/listings/system/local.storage/demo"
    r = s.get(home, timeout=30)
    assert r.status_code == 200, r.text
    listing = r.json()["result"]
    assert listing[0]["name"] == "." and listing[0]["path"] == "/home/demo" and listing[0]["type"] == "dir"
    assert len(listing) == 1
    # 5. mkdir
    r = s.put(f"{url}/files/v2/media/system/local.storage/demo", data={"action": "mkdir", "path": "data"},
              timeout=30)
    assert r.status_code == 201, r.text
    # 6. list again
    listing = s.get(home, timeout=30).json()["result"]
    assert [e["name"] for e in listing] == [".", "data"]
    assert listing[1]["type"] == "dir" and listing[1]["format"] == "folder"
    # 7. upload: 202 STAGING_QUEUED
    payload = os.urandom(300_000)
    r = s.post(f"{url}/files/v2/media/system/local.storage/demo/data",
               files={"fileToUpload": ("result.bin", payload)}, timeout=60)
    assert r.status_code == 202, r.text
    result = r.json()["result"]
    assert result["status"] == "STAGING_QUEUED" and result["name"] == "result.bin"
    assert result["path"] == "/home/demo/data/result.bin" and result["nativeFormat"] == "raw"
    assert set(result["_links"]) >= {"self", "system", "profile", "history"}
    # 8. wait until the listing shows it with its full length
    deadline = time.monotonic() + 15
    while True:
        r = s.get(f"{url}/files/v2/listings/system/local.storage/demo/data/result.bin", timeout=30)
        if r.status_code == 200 and r.json()["result"][0]["length"] == len(payload):
            break
        assert r.status_code in (200, 404), r.text
        assert time.monotonic() < deadline, "the upload never landed"
        time.sleep(0.05)
    # 9. download it byte-identical
    r = s.get(f"{url}/files/v2/media/system/local.storage/demo/data/result.bin", timeout=60)
    assert r.status_code == 200
    assert r.content == payload
    assert (emulator.home() / "data" / "result.bin").read_bytes() == payload
