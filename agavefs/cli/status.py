"""``agavefs status [MOUNTPOINT] [--json]``: what each live mount is doing.

For every live agavefs mount (or the one named): system and path, uptime, pending
uploads (path, size, state, attempts, last error), spool size, metadata cache
entries and hit ratio, listings and small files fetched ahead, requests by kind
with their errors, bytes up and down, and when the access token expires.
``--json`` prints the same as one JSON document.
"""

from __future__ import annotations

import json
import os
import sys
import time

from agavefs import control


def register(sub, name, help_text, formatter_class) -> None:
    p = sub.add_parser(name, help=help_text, description=__doc__.split("\n\n")[1],
                       formatter_class=formatter_class)
    p.add_argument("mountpoint", nargs="?", metavar="MOUNTPOINT", help="only this mount")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def collect(mountpoint: str | None) -> list[dict]:
    """Status of the named mount (OSError when it has no live daemon), or of every
    registered one.  A registration whose daemon is gone is removed; a daemon that
    is alive but does not answer in time is listed with an ``error``."""
    if mountpoint:
        return [control.status_of(os.path.abspath(os.path.expanduser(mountpoint)), timeout=10)]
    out = []
    for info in control.registered_mounts():
        mp = info.get("mountpoint")
        if not mp:
            control.forget(info)
            continue
        try:
            out.append(control.status_of(mp, timeout=5))
            continue
        except (OSError, ValueError) as exc:
            problem = exc
        if control.pid_alive(info.get("pid")) and not isinstance(problem, (ConnectionRefusedError,
                                                                          FileNotFoundError)):
            out.append({k: v for k, v in info.items() if not k.startswith("_")}
                       | {"error": f"the daemon (pid {info.get('pid')}) does not answer: {problem}"})
        else:  # its daemon is gone: forget the registration
            control.forget(info)
    return out


def _human(n) -> str:
    n = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _duration(seconds) -> str:
    seconds = int(seconds or 0)
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    return (f"{d}d " if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


def render(s: dict) -> str:
    backend = s.get("backend", {})
    cache = s.get("cache", {})
    lines = [f"{s.get('mountpoint')}  (agavefs#{s.get('system')}:{s.get('path')}, pid {s.get('pid')})",
             f"  server        {s.get('base_url')} as {s.get('username')}"]
    if s.get("error"):
        return "\n".join(lines + [f"  problem       {s['error']}"])
    lines.append(f"  uptime        {_duration(s.get('uptime'))}")
    expires = backend.get("token_expires_at")
    if expires:
        left = expires - time.time()
        when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(expires))
        lines.append(f"  token expires {when} ({'in ' + _duration(left) if left > 0 else 'expired; refreshed on use'})")
    else:
        lines.append("  token expires unknown")
    ratio = cache.get("hit_ratio")
    lines.append(f"  cache         {cache.get('entries', 0)} entries, {cache.get('listings', 0)} listings, "
                 f"hit ratio {'-' if ratio is None else f'{ratio:.0%}'}")
    ahead = s.get("ahead")
    if ahead:
        lines.append(f"  fetched ahead {ahead.get('listings', 0)} listings, {ahead.get('files', 0)} small files "
                     f"({ahead.get('files_used', 0)} read)")
    lines.append(f"  spool         {_human(s.get('spool_bytes'))} in {s.get('spool_dir')}")
    lines.append(f"  transfer      {_human(backend.get('bytes_down'))} down, {_human(backend.get('bytes_up'))} up, "
                 f"{s.get('uploaded_files', 0)} files stored")
    requests = backend.get("requests", {})
    errors = backend.get("errors", {})
    if requests:
        parts = [f"{k} {v}" + (f" ({errors[k]} failed)" if errors.get(k) else "") for k, v in sorted(requests.items())]
        lines.append(f"  requests      {', '.join(parts)}")
    if backend.get("retries"):
        lines.append(f"  retries       {backend['retries']}")
    pending = s.get("pending", [])
    lines.append(f"  pending       {len(pending)} upload{'s' if len(pending) != 1 else ''}")
    for p in pending:
        err = f"  last error: {p['last_error']}" if p.get("last_error") else ""
        lines.append(f"    {p['path']}  {_human(p['size'])}  {p['state']}  attempts {p['attempts']}{err}")
    for st in s.get("streaming", []):
        lines.append(f"    {st['path']}  {_human(st['sent'])} sent  streaming (open for writing)")
    return "\n".join(lines)


def run(args) -> int:
    try:
        mounts = collect(args.mountpoint)
    except (OSError, ValueError):
        print(f"agavefs status: {args.mountpoint} is not a live agavefs mount (run 'agavefs status' "
              f"to list the live ones)", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"mounts": mounts}, indent=2, sort_keys=True))
        return 0
    if not mounts:
        print("no agavefs mounts")
        return 0
    print("\n\n".join(render(m) for m in mounts))
    return 0
