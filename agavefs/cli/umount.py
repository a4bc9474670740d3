"""``agavefs umount MOUNTPOINT``: let pending uploads land, then unmount.

It asks the mount's daemon to drain its upload queue (printing the files and bytes
left as they go), unmounts with ``fusermount3 -u``, and waits for the daemon to
exit, so when it returns the server has every file written through the mount.
``--force`` unmounts at once and leaves pending uploads in the spool and journal;
the next mount of the same system and path finishes them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from agavefs import control


def register(sub, name, help_text, formatter_class) -> None:
    p = sub.add_parser(name, help=help_text, description=__doc__.split("\n\n")[1],
                       formatter_class=formatter_class)
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--force", action="store_true",
                   help="do not wait for pending uploads (they stay in the spool for the next mount)")
    p.add_argument("--lazy", action="store_true",
                   help="detach the mount even while files in it are open (fusermount3 -z)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="give up waiting for uploads after this long (default: wait as long as it takes)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def run(args) -> int:
    mountpoint = os.path.abspath(os.path.expanduser(args.mountpoint))
    pid = None
    try:
        info = control.status_of(mountpoint, timeout=5)
        pid = info.get("pid")
    except (OSError, ValueError):
        info = None
    if info is None and not os.path.ismount(mountpoint):
        try:
            os.statvfs(mountpoint)
            print(f"agavefs umount: {mountpoint} is not mounted", file=sys.stderr)
            return 1
        except OSError:
            pass  # a stale mount: fusermount3 -u clears it below
    if info is not None:
        try:
            if args.force:
                list(control.request(mountpoint, "force"))
            else:
                _drain(mountpoint, args)
        except TimeoutError:
            print(f"agavefs umount: uploads still pending after {args.timeout} s; "
                  f"nothing was unmounted", file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"agavefs umount: lost contact with the mount daemon ({exc})", file=sys.stderr)
            return 1
    fusermount = shutil.which("fusermount3") or "fusermount3"
    cmd = [fusermount, "-u"] + (["-z"] if args.lazy else []) + [mountpoint]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        reason = r.stderr.strip() or f"{fusermount} failed"
        if "busy" in reason.lower():
            reason += f" (close the files and shells open in it, or use 'agavefs umount --lazy {mountpoint}')"
        print(f"agavefs umount: {reason}", file=sys.stderr)
        return 1
    if pid:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and control.pid_alive(pid):
            time.sleep(0.01)
    if not args.quiet and info is not None:
        print(f"agavefs: unmounted {mountpoint}" + ("" if args.force else "; the server has every file"))
    return 0


def _drain(mountpoint: str, args) -> None:
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    shown = False
    for msg in control.request(mountpoint, "drain", timeout=args.timeout or 3600 * 24):
        if msg.get("done"):
            break
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError
        files, size = msg.get("files", 0), msg.get("bytes", 0)
        if files and not args.quiet:
            print(f"agavefs: waiting for {files} file{'s' if files != 1 else ''} ({_human(size)}) "
                  f"to reach the server...", file=sys.stderr, flush=True)
            shown = True
    if shown and not args.quiet:
        print("agavefs: all uploads stored", file=sys.stderr)
