#!/usr/bin/env python3
"""Take docs/screenshot.png: a desktop file manager (pcmanfm) showing an `agavefs demo` mount.

Everything runs headless and in a throw-away directory, so the picture always shows
the freshly seeded demo files and nothing of yours is touched:

1. Xvfb on a free display (``-displayfd``), no window manager;
2. ``agavefs demo MOUNTPOINT`` with XDG_DATA_HOME/XDG_CACHE_HOME in the temporary
   directory (its own data, credentials and spool);
3. pcmanfm on the mount (icon view, thumbnails on), given a few seconds to list the
   folder and draw;
4. ImageMagick ``import -window root``, cropped to the file manager's window;
5. cleanup of exactly what it started, by pid: pcmanfm, then the demo (SIGINT: it
   unmounts and stops its server), then Xvfb.

Needs (Debian): xvfb pcmanfm imagemagick x11-utils (xwininfo).  Run from the
repository:  .venv/bin/python scripts/screenshot.py [--output docs/screenshot.png]
"""

from __future__ import annotations

import argparse
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOOLS = {"Xvfb": "xvfb", "pcmanfm": "pcmanfm", "import": "imagemagick", "xwininfo": "x11-utils"}
WIDTH, HEIGHT = 860, 520

PCMANFM_CONF = f"""[config]
bm_open_method=0

[volume]
mount_on_startup=0
mount_removable=0
autorun=0

[ui]
always_show_tabs=0
hide_close_btn=0
win_width={WIDTH}
win_height={HEIGHT}
splitter_pos=150
media_in_new_tab=0
desktop_folder_new_win=0
change_tab_on_drop=1
close_on_unmount=1
focus_previous=0
side_pane_mode=places
view_mode=icon
show_hidden=0
sort=name;ascending;
toolbar=navigation;
show_statusbar=1
pathbar_mode_buttons=0
"""

LIBFM_CONF = """[config]
single_click=0
use_trash=0
confirm_del=1
thumbnail_local=1
thumbnail_max=2048
show_thumbnail=1
shadow_hidden=1
only_user_templates=1
"""


def log(text: str) -> None:
    print(f"screenshot: {text}", file=sys.stderr, flush=True)


def stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, wait: float = 10) -> None:
    """Stop one process we started, by its pid."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def read_until(proc: subprocess.Popen, pattern: str, timeout: float) -> str:
    """Read ``proc``'s stdout until a line matches ``pattern``; returns all it read."""
    out = ""
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 4096).decode(errors="replace")
            if not chunk:
                break
            out += chunk
            if re.search(pattern, out):
                return out
        elif proc.poll() is not None:
            break
    raise RuntimeError(f"did not see {pattern!r}; got: {out[-2000:]}")


def window_geometry(display: str, name: str) -> tuple[int, int, int, int] | None:
    r = subprocess.run(["xwininfo", "-display", display, "-root", "-tree"], capture_output=True, text=True)
    for line in r.stdout.splitlines():
        if f'"{name}"' in line and "pcmanfm" in line.lower():
            m = re.search(r"(\d+)x(\d+)\+(-?\d+)\+(-?\d+)", line)
            if m:
                w, h, x, y = map(int, m.groups())
                if w > 100 and h > 100:
                    return w, h, x, y
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", default=str(REPO / "docs" / "screenshot.png"), help="PNG to write")
    ap.add_argument("--wait", type=float, default=4.0, help="seconds to let the file manager draw")
    ap.add_argument("--python", default=sys.executable, help="the Python that has agavefs installed")
    args = ap.parse_args(argv)

    missing = [f"{tool} (apt-get install {pkg})" for tool, pkg in TOOLS.items() if not shutil.which(tool)]
    if missing:
        log("missing: " + ", ".join(missing))
        return 2
    if not os.path.exists("/dev/fuse") or not shutil.which("fusermount3"):
        log("needs FUSE: /dev/fuse and fusermount3 (apt-get install fuse3)")
        return 2

    work = Path(tempfile.mkdtemp(prefix="agavefs-shot-"))
    xvfb = demo = fm = None
    try:
        # 1. X server on a free display
        rfd, wfd = os.pipe()
        xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(wfd), "-screen", "0", f"{WIDTH + 40}x{HEIGHT + 40}x24",
                                 "-nolisten", "tcp"], pass_fds=(wfd,), stdout=subprocess.DEVNULL,
                                stderr=open(work / "xvfb.log", "wb"), start_new_session=True)
        os.close(wfd)
        number = b""
        deadline = time.monotonic() + 20
        while not number.endswith(b"\n") and time.monotonic() < deadline:
            ready, _, _ = select.select([rfd], [], [], 0.5)
            if ready:
                chunk = os.read(rfd, 64)
                if not chunk:
                    break
                number += chunk
        os.close(rfd)
        if not number.strip():
            raise RuntimeError(f"Xvfb did not start: {(work / 'xvfb.log').read_text(errors='replace')[-500:]}")
        display = ":" + number.decode().strip()
        log(f"Xvfb on display {display} (pid {xvfb.pid})")

        # 2. the demo, in a home of its own
        env = dict(os.environ, HOME=str(work / "home"), XDG_DATA_HOME=str(work / "data"),
                   XDG_CACHE_HOME=str(work / "cache"), XDG_CONFIG_HOME=str(work / "config"),
                   XDG_RUNTIME_DIR=str(work / "run"), DISPLAY=display)
        env.pop("AGAVE_CACHE_DIR", None)
        env.pop("DBUS_SESSION_BUS_ADDRESS", None)
        for d in ("home", "data", "cache", "run", "config/pcmanfm/default", "config/libfm"):
            (work / d).mkdir(parents=True, exist_ok=True)
        os.chmod(work / "run", 0o700)
        (work / "config/pcmanfm/default/pcmanfm.conf").write_text(PCMANFM_CONF)
        (work / "config/libfm/libfm.conf").write_text(LIBFM_CONF)
        mountpoint = work / "home" / "agave-demo"
        demo = subprocess.Popen([args.python, "-m", "agavefs", "demo", str(mountpoint)], env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=open(work / "demo.err", "wb"), start_new_session=True, cwd=str(REPO))
        try:
            read_until(demo, r"Press Ctrl-C", 90)
        except RuntimeError as exc:
            raise RuntimeError(f"agavefs demo did not come up: {exc}; "
                               f"{(work / 'demo.err').read_text(errors='replace')[-1000:]}") from None
        log(f"agavefs demo mounted on {mountpoint} (pid {demo.pid})")

        # 3. the file manager
        fm = subprocess.Popen(["pcmanfm", str(mountpoint)], env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=open(work / "pcmanfm.log", "wb"),
                              start_new_session=True, cwd=str(work / "home"))
        geometry = None
        deadline = time.monotonic() + 30
        while geometry is None and time.monotonic() < deadline:
            if fm.poll() is not None:
                raise RuntimeError(f"pcmanfm exited: {(work / 'pcmanfm.log').read_text(errors='replace')[-500:]}")
            time.sleep(0.3)
            geometry = window_geometry(display, mountpoint.name)
        if geometry is None:
            raise RuntimeError("pcmanfm's window did not appear")
        time.sleep(args.wait)  # listing, icons and thumbnails

        # 4. the picture
        w, h, x, y = geometry
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp_png = work / "shot.png"
        subprocess.run(["import", "-display", display, "-window", "root", "-crop", f"{w}x{h}+{max(x, 0)}+{max(y, 0)}",
                        "+repage", str(tmp_png)], check=True, env=env, timeout=60)
        shutil.copyfile(tmp_png, output)
        log(f"wrote {output} ({w}x{h})")
        return 0
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        log(f"failed: {exc}")
        return 1
    finally:
        # 5. cleanup: only what we started, by pid, in order
        stop(fm)
        if demo is not None and demo.poll() is None:
            stop(demo, signal.SIGINT, wait=90)
        if demo is not None and demo.stdout is not None:
            demo.stdout.close()
        stop(xvfb)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
