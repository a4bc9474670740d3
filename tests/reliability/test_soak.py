"""The soak script's short runs: ``scripts/soak.py --minutes 0.5`` (random operations
from three processes, every fault phase switched on and off) and the 30-second version
of the token soak (``--token-ttl 3`` all along).  The two run at the same time (each in
its own emulator and mount).  The long runs are the scripts themselves
(``scripts/soak.py --minutes N``, ``scripts/token_soak.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from relsupport import count

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
RUNS = {
    "soak": ("soak.py", "--minutes", "0.5", "--seed", "8"),
    "token": ("token_soak.py", "--minutes", "0.5", "--seed", "9"),
}


@pytest.fixture(scope="module")
def soak_runs(tmp_path_factory):
    """Both scripts started at once; each test waits for its own."""
    procs = {}
    for key, (script, *args) in RUNS.items():
        work = tmp_path_factory.mktemp(key)
        out = work / "summary.json"
        proc = subprocess.Popen([sys.executable, str(SCRIPTS / script), "--workdir", str(work), "--json", str(out),
                                 *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs[key] = (proc, out)
    yield procs
    for proc, _ in procs.values():
        if proc.poll() is None:
            proc.terminate()  # ours, by pid: the script unmounts and stops its emulator
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _result(soak_runs, key) -> dict:
    proc, out = soak_runs[key]
    try:
        _, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    assert out.exists(), err[-3000:]
    summary = json.loads(out.read_text())
    assert proc.returncode == 0 and summary["ok"], json.dumps(summary, indent=1)[-3000:] + err[-8000:]
    assert summary["lost"] == 0 and not summary["failures"]
    count(ops_under_faults=summary["totals"]["ops"], faults_injected=summary["faults_injected_503"]
          + summary["emulator_restarts"], files_verified=summary["files_verified"],
          bytes_compared=summary["bytes_compared"])
    print(f"\n{' '.join(RUNS[key])}: {summary['totals']['ops']} operations by {summary['workers']} processes, "
          f"{summary['requests']} requests, {summary['faults_injected_503']} 503s, "
          f"{summary['emulator_restarts']} restarts, {summary['token_refreshes']} token refreshes, "
          f"{summary['files_verified']} files / {summary['bytes_compared']} bytes verified, lost {summary['lost']}")
    return summary


def test_soak_half_a_minute_with_every_fault(soak_runs):
    s = _result(soak_runs, "soak")
    assert s["emulator_restarts"] >= 5 and s["faults_injected_503"] > 0
    assert s["totals"]["ops"] > 200 and s["totals"]["bytes_read_checked"] > 0


def test_token_ttl_3_for_30_seconds(soak_runs):
    """No EACCES, no failed operation while the token expires every 3 seconds."""
    s = _result(soak_runs, "token")
    assert s["token_refreshes"] >= 5
    # the only restart is the one to a calm server at the end
    assert s["emulator_restarts"] <= 1 and s["totals"]["failures"] == 0
