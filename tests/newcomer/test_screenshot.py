"""Issue 6: the screenshot script runs and produces a PNG of pcmanfm showing the demo
mount: the picture has the file manager's size and shows the demo's agave.png
thumbnail (green disc pixels), which pcmanfm could only draw by reading the file
through the mount.  Skipped where Xvfb, pcmanfm, ImageMagick or xwininfo are not
installed (scripts/setup.sh does not install them; see README "Development")."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys

import pytest

from newcomer_support import HAVE_FUSE, REPO

TOOLS = ("Xvfb", "pcmanfm", "import", "convert", "xwininfo")
pytestmark = [
    pytest.mark.skipif(not HAVE_FUSE, reason="needs /dev/fuse and fusermount3 (apt install fuse3)"),
    pytest.mark.skipif(not all(shutil.which(t) for t in TOOLS),
                       reason="needs xvfb pcmanfm imagemagick x11-utils (apt install)"),
]


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.timeout(180)
def test_screenshot_script_draws_the_demo_mount(tmp_path):
    out = tmp_path / "shot.png"
    r = subprocess.run([sys.executable, str(REPO / "scripts/screenshot.py"), "--output", str(out)],
                       capture_output=True, text=True, timeout=170, cwd=str(REPO))
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    width, height = png_size(out.read_bytes())
    assert (width, height) == (860, 520)
    raw = subprocess.run(["convert", str(out), "-depth", "8", "rgb:-"], capture_output=True, check=True).stdout
    assert len(raw) == width * height * 3
    pixels = {raw[i:i + 3] for i in range(0, len(raw), 3)}
    assert len(pixels) > 200, "the picture is nearly blank"
    # the thumbnail of agave.png: its disc is (46, 125..185, 80)
    green = [p for p in pixels if abs(p[0] - 46) <= 12 and 115 <= p[1] <= 195 and abs(p[2] - 80) <= 12]
    assert len(green) >= 3, "no thumbnail of agave.png: pcmanfm did not read through the mount"
    # everything it started is gone: no mount of a screenshot home is left
    assert not [line for line in open("/proc/mounts") if "agavefs-shot-" in line]


def test_committed_screenshot_is_a_png():
    data = (REPO / "docs/screenshot.png").read_bytes()
    assert png_size(data)[0] >= 600 and os.path.getsize(REPO / "docs/screenshot.png") > 5000
