"""Shared helpers of the client tests (emulator-backed)."""

from __future__ import annotations

import os
import subprocess
import time

from helpers import REPO, agavefs_cmd, password_token

from agavefs.client import AgaveClient, Credentials
from agavefs.client.credentials import format_expires_at


def write_cli_cache(emu, cache_dir, user="demo", password="demo", client_name="tests") -> Credentials:
    """A cache written the way agave-cli writes it (every value a string)."""
    tok = password_token(emu.url, user, password, verify=emu.verify(), client_name=client_name)
    now = int(time.time())
    creds = Credentials.from_dict({
        "tenantid": "agave.prod", "baseurl": emu.url, "devurl": "", "apisecret": tok["apisecret"],
        "apikey": tok["apikey"], "username": user, "access_token": tok["access_token"],
        "refresh_token": tok["refresh_token"], "created_at": str(now),
        "expires_in": str(tok["expires_in"]), "expires_at": format_expires_at(now + int(tok["expires_in"])),
    })
    creds.save(os.path.join(str(cache_dir), "current"))
    return creds


def client_for(emu, cache_dir, **kw) -> AgaveClient:
    if not os.path.exists(os.path.join(str(cache_dir), "current")):
        write_cli_cache(emu, cache_dir)
    if emu.tls:
        kw.setdefault("ca_bundle", emu.ca_file)
    kw.setdefault("op_timeout", 20)
    return AgaveClient(Credentials.load(str(cache_dir)), **kw)


def run_login(url, cache_dir, password="demo", *extra, user="demo", timeout=60):
    env = dict(os.environ, AGAVE_CACHE_DIR=str(cache_dir))
    return subprocess.run(agavefs_cmd("login", "--base-url", url, "--username", user,
                                      "--password-stdin", *extra),
                          input=password + "\n", capture_output=True, text=True, env=env,
                          cwd=str(REPO), timeout=timeout)


def wait_stored(client, path, size, timeout=30.0, stall=20.0):
    return client.wait_staged(path, size, time.monotonic() + timeout, stall_timeout=stall)
