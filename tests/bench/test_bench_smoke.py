"""The benchmark harness still runs: ``scripts/bench.py --quick --runs 1`` end to end.

Tiny sizes, loopback only, no peers: it mounts for real (skipped without FUSE), so
this keeps the harness from rotting; the numbers themselves are not checked (speed
lives in the benchmark, never in a timed test).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
HAVE_FUSE = os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None

pytestmark = pytest.mark.skipif(not HAVE_FUSE, reason="needs /dev/fuse and fusermount3")


def test_quick_bench_produces_the_table(tmp_path):
    results = tmp_path / "results"
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "bench.py"), "--quick", "--runs", "1",
                        "--data-dir", str(tmp_path / "data"), "--results", str(results), "--no-docs"],
                       capture_output=True, text=True, timeout=240, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    table = (results / "table.md").read_text()
    assert "| workload | agavefs | direct | ratio |" in table
    assert "ERROR" not in table, table
    rows = [line for line in table.splitlines() if line.startswith("| ") and "workload" not in line]
    assert len(rows) == 20  # 10 workloads, cold and warm
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] != "-" and cells[2] != "-", row  # agavefs and direct both measured
    data = json.loads((results / "results.json").read_text())
    assert {s["tool"] for s in data["samples"]} == {"agavefs", "direct"}
    assert any(s["requests"] and s["requests"]["total"] > 0 for s in data["samples"])
    assert any(s["rss_mib"] for s in data["samples"])
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:
        assert (results / "chart.png").stat().st_size > 0
    leftover = [line for line in Path("/proc/mounts").read_text().splitlines() if "agavefs-bench-" in line]
    assert not leftover, leftover
