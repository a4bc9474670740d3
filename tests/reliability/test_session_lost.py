"""A dead session: the refresh token is gone (revoked, or rotated by a refresh whose
answer was lost when the server restarted: the soak hit this with --token-ttl 8 and
restarts).  The mount answers EACCES with "log in again" - and logging in again must
be enough: the running mount adopts the new login (another OAuth client of the same
user) without a remount, and what was written meanwhile still lands."""

from __future__ import annotations

import json
import os
import time

import pytest
import requests

from agavefs.client import Credentials
from helpers import password_token



def test_log_in_again_revives_a_running_mount(emulator_factory, mount_factory):
    emu = emulator_factory("--token-ttl", "3", "--staging-delay", "0.1")
    (emu.home() / "dir").mkdir()
    m = mount_factory(emu, "--negative-ttl", "30")
    (m.path / "before.txt").write_bytes(b"written with the first session")
    os.listdir(m.path)  # the names below are known to be free: creating them asks nothing
    creds = json.loads((m.creds / "current").read_text())
    r = requests.post(f"{emu.url}/revoke", auth=(creds["apikey"], creds["apisecret"]),
                      data={"token": creds["refresh_token"]}, timeout=30)
    assert r.status_code == 200, r.text
    time.sleep(3.5)  # the access token expires too: nothing can refresh it
    with pytest.raises(PermissionError):
        os.listdir(m.path / "dir")
    # written while logged out: spool only, its upload waits
    (m.path / "meanwhile.txt").write_bytes(b"written while the session was dead")
    assert "log in again" in m.log_text()
    # the user logs in again - here with another tool that made its own OAuth client
    # (agave-cli, tapis-cli): same user, same gateway, another apikey.  (`agavefs login`
    # reuses the cached client, which the mount adopts through the usual path.)
    tok = password_token(emu.url, "demo", "demo", client_name="another-tool")
    Credentials(baseurl=emu.url, username="demo", apikey=tok["apikey"], apisecret=tok["apisecret"],
                access_token=tok["access_token"], refresh_token=tok["refresh_token"],
                created_at=str(int(time.time())), expires_in=str(tok["expires_in"])).save(
        str(m.creds / "current"))
    deadline = time.monotonic() + 15
    while True:
        try:
            assert os.listdir(m.path / "dir") == []
            break
        except PermissionError:
            assert time.monotonic() < deadline, m.log_tail()
            time.sleep(0.5)
    (m.path / "after.txt").write_bytes(b"after")
    r = m.umount(timeout=120)
    assert r.returncode == 0, r.stderr + m.log_tail()
    assert (emu.home() / "before.txt").read_bytes() == b"written with the first session"
    assert (emu.home() / "meanwhile.txt").read_bytes() == b"written while the session was dead"
    assert (emu.home() / "after.txt").read_bytes() == b"after"
    assert "using the new login" in m.log_text()
