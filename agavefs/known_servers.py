"""What a mount learned about its server, kept for the next mount of it.

Design note
-----------
Some knowledge about a server can only be bought with requests, and is the same on every
mount: today, the longest listing page the server returned (paging.py: until a client has
seen a page longer than the one in hand, a short page may be the server's cap on ``limit``
and costs a probe; a tree of equal small directories pays one per directory).  A clean exit
of the daemon writes it here; the next mount gives it to its client as a hint, which the
client checks with one request before relying on it (so a server that lowered its cap
since is noticed, not believed).

One JSON file, ``$XDG_CACHE_HOME/agavefs/servers.json`` (else ``~/.cache/...``), mode 0600:
``{"version": 1, "servers": {KEY: {"listing_pages": {...}, "used": EPOCH}}}``, where KEY is
a hash of (base URL, user name, system): no address or name in clear, and the recorded path
is only meaningful to that user on that system.  At most ``MAX_SERVERS`` entries, the least
recently used dropped.  Writes take ``servers.json.lock`` (flock) and replace the file
atomically; a missing, unreadable or malformed file reads as empty (it only saves requests).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time

from agavefs.client.credentials import file_lock, write_private_file

log = logging.getLogger("agavefs.known_servers")

MAX_SERVERS = 64
VERSION = 1


def default_path() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "agavefs", "servers.json")


def server_key(base_url: str, username: str, system: str) -> str:
    return hashlib.sha256(f"{base_url}\0{username}\0{system}".encode()).hexdigest()[:24]


def _read(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(1 << 20).decode("utf-8"))
    except (OSError, ValueError):
        return {}
    servers = data.get("servers") if isinstance(data, dict) and data.get("version") == VERSION else None
    if not isinstance(servers, dict):
        return {}
    return {k: v for k, v in servers.items() if isinstance(k, str) and isinstance(v, dict)}


def load(key: str, path: str | None = None) -> dict:
    """What was recorded for ``key`` ({} when nothing)."""
    return dict(_read(path or default_path()).get(key, {}))


def save(key: str, facts: dict, path: str | None = None) -> bool:
    """Merge ``facts`` into ``key``'s record (None values are left out).  False when the
    file could not be written (logged; never raised: this only saves requests)."""
    path = path or default_path()
    facts = {k: v for k, v in facts.items() if v is not None}
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        with file_lock(path + ".lock"):
            servers = _read(path)
            entry = dict(servers.get(key, {}))
            entry.update(facts)
            entry["used"] = time.time()
            servers[key] = entry
            if len(servers) > MAX_SERVERS:
                keep = sorted(servers, key=lambda k: _used(servers[k]), reverse=True)[:MAX_SERVERS]
                servers = {k: servers[k] for k in keep}
            write_private_file(path, json.dumps({"version": VERSION, "servers": servers}).encode() + b"\n")
        return True
    except OSError as exc:
        log.warning("could not keep what this mount learned about its server in %s: %s", path, exc)
        return False


def _used(entry: dict) -> float:
    used = entry.get("used")
    return float(used) if isinstance(used, (int, float)) else 0.0
