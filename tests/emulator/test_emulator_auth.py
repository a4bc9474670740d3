"""Auth: OAuth clients, password and refresh grants, revoke, gateway faults, stored state."""

from __future__ import annotations

import sqlite3
import time

import requests

from emu_client import Api
from helpers import password_token

FAULT_CODES = {900901, 900902}


def assert_fault(r: requests.Response) -> None:
    assert r.status_code == 401, r.text
    fault = r.json()["fault"]
    assert fault["code"] in FAULT_CODES and fault["message"] == "Invalid Credentials" and fault["description"]


def test_clients_lifecycle(emulator):
    url = emulator.url
    r = requests.post(f"{url}/clients/v2/", auth=("demo", "demo"), timeout=30,
                      data={"clientName": "c1", "description": "mine", "tier": "gold", "callbackUrl": "http://x"})
    assert r.status_code == 201
    res = r.json()["result"]
    assert res["tier"] == "Gold" and res["description"] == "mine" and res["consumerSecret"]
    r = requests.post(f"{url}/clients/v2", auth=("demo", "demo"), json={"clientName": "c2"}, timeout=30)
    assert r.status_code == 201
    r = requests.post(f"{url}/clients/v2", auth=("demo", "demo"), data={"clientName": "c1"}, timeout=30)
    assert r.status_code == 400 and "already exists" in r.json()["message"]
    r = requests.post(f"{url}/clients/v2", auth=("demo", "demo"), data={"description": "x"}, timeout=30)
    assert r.status_code == 400 and r.json()["message"] == "clientName is required"
    r = requests.post(f"{url}/clients/v2", auth=("demo", "demo"), data={"clientName": "c3", "tier": "x"},
                      timeout=30)
    assert r.status_code == 400
    r = requests.post(f"{url}/clients/v2", auth=("demo", "wrong"), data={"clientName": "c4"}, timeout=30)
    assert r.status_code == 401
    r = requests.get(f"{url}/clients/v2", auth=("demo", "demo"), timeout=30)
    listed = r.json()["result"]
    assert [c["name"] for c in listed] == ["c1", "c2"]
    assert all("consumerSecret" not in c and c["consumerKey"] for c in listed)
    assert requests.get(f"{url}/clients/v2/c2", auth=("demo", "demo"), timeout=30).json()["result"]["name"] == "c2"
    r = requests.delete(f"{url}/clients/v2/c2", auth=("demo", "demo"), timeout=30)
    assert r.status_code == 200 and r.json()["message"] == "Client removed successfully."
    assert requests.delete(f"{url}/clients/v2/c2", auth=("demo", "demo"), timeout=30).status_code == 404
    assert [c["name"] for c in requests.get(f"{url}/clients/v2", auth=("demo", "demo"),
                                            timeout=30).json()["result"]] == ["c1"]


def token(url, key, secret, **data):
    return requests.post(f"{url}/token", auth=(key, secret), data=data, timeout=30)


def test_token_grants_refresh_rotation_and_revoke(emulator):
    url = emulator.url
    tok = password_token(url, "demo", "demo")
    key, secret = tok["apikey"], tok["apisecret"]
    me = f"{url}/profiles/v2/me"

    def works(access):
        return requests.get(me, headers={"Authorization": f"Bearer {access}"}, timeout=30).status_code == 200

    assert works(tok["access_token"])
    r = token(url, key, secret, grant_type="password", username="demo", password="nope")
    assert r.status_code in (400, 401) and r.json()["error"] == "invalid_grant" and r.json()["error_description"]
    r = token(url, key, "badsecret", grant_type="password", username="demo", password="demo")
    assert r.status_code in (400, 401) and "error" in r.json()
    r = token(url, key, secret)
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    r = token(url, key, secret, grant_type="refresh_token")
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    r = token(url, key, secret, grant_type="magic")
    assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"
    # refresh: a new pair; the old refresh token and the old access token die
    r = token(url, key, secret, grant_type="refresh_token", refresh_token=tok["refresh_token"], scope="PRODUCTION")
    assert r.status_code == 200, r.text
    new = r.json()
    assert new["refresh_token"] != tok["refresh_token"] and new["access_token"] != tok["access_token"]
    assert new["expires_in"] == 14400 and new["token_type"] == "bearer"
    assert works(new["access_token"]) and not works(tok["access_token"])
    r = token(url, key, secret, grant_type="refresh_token", refresh_token=tok["refresh_token"])
    assert r.status_code in (400, 401) and r.json()["error"] == "invalid_grant"
    # revoke kills both tokens
    r = requests.post(f"{url}/revoke", auth=(key, secret), data={"token": new["access_token"]}, timeout=30)
    assert r.status_code == 200 and r.content == b""
    assert not works(new["access_token"])
    r = token(url, key, secret, grant_type="refresh_token", refresh_token=new["refresh_token"])
    assert r.status_code in (400, 401)


def test_gateway_faults(emulator_factory):
    emu = emulator_factory("--token-ttl", "2")
    url = emu.url
    listing = f"{url}/files/v2/listings/system/local.storage/demo"
    r = requests.get(listing, timeout=30)
    assert_fault(r)
    assert r.json()["fault"]["code"] == 900902
    assert_fault(requests.get(listing, headers={"Authorization": "Bearer 0123456789abcdef"}, timeout=30))
    assert_fault(requests.get(listing, headers={"Authorization": "Basic ZGVtbzpkZW1v"}, timeout=30))
    assert_fault(requests.get(f"{url}/profiles/v2/me", headers={"Authorization": "Bearer"}, timeout=30))
    tok = password_token(url, "demo", "demo")
    assert tok["expires_in"] == 2
    good = {"Authorization": f"Bearer {tok['access_token']}"}
    assert requests.get(listing, headers=good, timeout=30).status_code == 200
    time.sleep(2.3)
    r = requests.get(listing, headers=good, timeout=30)
    assert_fault(r)
    assert r.json()["fault"]["code"] == 900901
    # refreshing after expiry works (agavepy's with_refresh does exactly this)
    r = token(url, tok["apikey"], tok["apisecret"], grant_type="refresh_token", refresh_token=tok["refresh_token"])
    assert r.status_code == 200
    assert requests.get(listing, headers={"Authorization": f"Bearer {r.json()['access_token']}"},
                        timeout=30).status_code == 200


def test_secrets_and_tokens_are_hashed_at_rest(emulator):
    api = Api(emulator)
    tok = api.tok
    r = requests.post(f"{emulator.url}/token", auth=(tok["apikey"], tok["apisecret"]), timeout=30,
                      data={"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]})
    fresh = r.json()
    emulator.stop()  # checkpoint the WAL so the main file holds everything
    state = emulator.root / ".agave-emulator" / "state.sqlite"
    blobs = b""
    for f in state.parent.glob("state.sqlite*"):
        blobs += f.read_bytes()
    for secret in (tok["apisecret"], tok["access_token"], tok["refresh_token"], fresh["access_token"],
                   fresh["refresh_token"], "demo:demo"):
        assert secret.encode() not in blobs, secret
    db = sqlite3.connect(state)
    dump = "\n".join(db.iterdump())
    db.close()
    for secret in (tok["apisecret"], fresh["access_token"], fresh["refresh_token"]):
        assert secret not in dump
    assert tok["apikey"] in dump  # the key is an identifier, not a secret
    assert (state.stat().st_mode & 0o077) == 0


def test_state_survives_restart(emulator):
    api = Api(emulator)
    api.put_file("demo", "keep.txt", b"kept")
    users = (("demo", "demo"), ("bob", "bobpw"))
    emulator.users = list(users)
    emulator.restart()
    assert api.list("demo/keep.txt").status_code == 200               # old access token still valid
    assert api.events("demo/keep.txt")[:3] == ["CREATED", "STAGING_QUEUED", "STAGING_COMPLETED"]
    r = token(emulator.url, api.tok["apikey"], api.tok["apisecret"], grant_type="refresh_token",
              refresh_token=api.tok["refresh_token"])
    assert r.status_code == 200                                        # refresh token too
    api.s.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
    r = requests.get(f"{emulator.url}/clients/v2", auth=("demo", "demo"), timeout=30)
    assert [c["name"] for c in r.json()["result"]] == ["tests-demo"]
    assert api.s.post(api.files("pems", "demo/keep.txt"), timeout=30,
                      json={"username": "bob", "permission": "READ"}).status_code == 201
    emulator.restart()
    bob = Api(emulator, "bob", "bobpw")
    assert bob.download("demo/keep.txt").content == b"kept"           # grants survive too
