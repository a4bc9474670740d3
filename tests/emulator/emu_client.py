"""A tiny plain-``requests`` Agave client for the emulator's own tests.

Deliberately independent of agavefs's client: these tests check the server against
the reference, so they speak HTTP directly.
"""

from __future__ import annotations

import time
import urllib.parse

import requests

from helpers import Emulator, password_token

SYSTEM = "local.storage"


def q(path: str) -> str:
    """Percent-encode a path for a URL, keeping "/" (names may hold # ? % + and spaces)."""
    return urllib.parse.quote(path, safe="/")


class Api:
    def __init__(self, emu: Emulator, user: str = "demo", password: str = "demo"):
        self.emu = emu
        self.user = user
        self.url = emu.url
        self.s = requests.Session()
        # REQUESTS_CA_BUNDLE (set on many machines) would override Session.verify (requests #3829)
        self.s.trust_env = False
        self.s.verify = emu.verify()
        self.tok = password_token(self.url, user, password, verify=emu.verify(), client_name=f"tests-{user}")
        self.s.headers["Authorization"] = "Bearer " + self.tok["access_token"]

    def files(self, svc: str, path: str) -> str:
        """URL of ``/files/v2/SVC/system/local.storage/PATH`` (PATH home-relative or //abs)."""
        return f"{self.url}/files/v2/{svc}/system/{SYSTEM}/{q(path)}"

    def list(self, path: str, **params) -> requests.Response:
        return self.s.get(self.files("listings", path), params=params, timeout=30)

    def names(self, path: str, **params) -> list[str]:
        r = self.list(path, **params)
        assert r.status_code == 200, r.text
        return [e["name"] for e in r.json()["result"]]

    def mkdir(self, parent: str, path: str) -> requests.Response:
        return self.s.put(self.files("media", parent), data={"action": "mkdir", "path": path}, timeout=30)

    def manage(self, path: str, action: str, dest: str | None = None, json: bool = False) -> requests.Response:
        body = {"action": action} if dest is None else {"action": action, "path": dest}
        if json:
            return self.s.put(self.files("media", path), json=body, timeout=30)
        return self.s.put(self.files("media", path), data=body, timeout=30)

    def upload(self, directory: str, name: str, data: bytes, **fields) -> requests.Response:
        return self.s.post(self.files("media", directory), files={"fileToUpload": (name, data)},
                           data=fields, timeout=60)

    def download(self, path: str, **kw) -> requests.Response:
        return self.s.get(self.files("media", path), timeout=60, **kw)

    def delete(self, path: str, **params) -> requests.Response:
        return self.s.delete(self.files("media", path), params=params, timeout=30)

    def history(self, path: str, **params) -> requests.Response:
        return self.s.get(self.files("history", path), params=params, timeout=30)

    def events(self, path: str) -> list[str]:
        r = self.history(path, limit=1000)
        assert r.status_code == 200, r.text
        return [e["status"] for e in r.json()["result"]]

    def wait_length(self, path: str, length: int, timeout: float = 15.0) -> dict:
        """Poll the listing until the file shows ``length`` bytes (staging finished)."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.list(path)
            if r.status_code == 200 and r.json()["result"][0]["length"] == length:
                return r.json()["result"][0]
            if time.monotonic() > deadline:
                raise AssertionError(f"{path} never reached {length} bytes: {r.status_code} {r.text[:300]}")
            time.sleep(0.05)

    def put_file(self, directory: str, name: str, data: bytes) -> None:
        """Upload and wait until staged."""
        r = self.upload(directory, name, data)
        assert r.status_code == 202, r.text
        self.wait_staged(f"{directory}/{name}")

    def wait_staged(self, path: str, timeout: float = 15.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            events = self.events(path)
            last = events[len(events) - 1 - events[::-1].index("STAGING_QUEUED"):]
            if "STAGING_COMPLETED" in last or "STAGING_FAILED" in last:
                return last
            if time.monotonic() > deadline:
                raise AssertionError(f"{path} never staged: {events}")
            time.sleep(0.05)
