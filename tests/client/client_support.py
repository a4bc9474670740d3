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


def splice_all(stream, step: int) -> bytes:
    """Everything left in ``stream``, moved by ``splice_into`` through pipes of the
    default size (so a pipe also fills before ``step``), as bytes; AssertionError if
    the stream says it cannot splice."""
    out = bytearray()
    while True:
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            n = stream.splice_into(w, step)
            assert n is not None, "this stream cannot splice"
            if not n:
                return bytes(out)
            left = n
            while left:
                part = os.read(r, left)
                assert part, "the pipe holds fewer bytes than splice_into said"
                out += part
                left -= len(part)
            assert not _pipe_has_more(r)
        finally:
            os.close(r)
            os.close(w)


def _pipe_has_more(fd: int) -> bool:
    try:
        return bool(os.read(fd, 1))
    except BlockingIOError:
        return False
