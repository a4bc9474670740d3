"""An unexpected failure inside a handler: a 500 Agave envelope, the traceback only in the log."""

from __future__ import annotations

import logging

import requests

from agavefs.emulator import EmulatorServer, Options
from agavefs.emulator.files import FileService


def test_500_is_an_envelope_and_logged(tmp_path, monkeypatch, caplog):
    def boom(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(FileService, "listing", boom)
    emu = EmulatorServer(Options(root=str(tmp_path / "root"))).start()   # in process, to break it
    try:
        c = requests.post(f"{emu.url}/clients/v2", auth=("demo", "demo"), data={"clientName": "x"}, timeout=30)
        c = c.json()["result"]
        t = requests.post(f"{emu.url}/token", auth=(c["consumerKey"], c["consumerSecret"]), timeout=30,
                          data={"grant_type": "password", "username": "demo", "password": "demo"}).json()
        with caplog.at_level(logging.ERROR, logger="agavefs.emulator"):
            r = requests.get(f"{emu.url}/files/v2/listings/system/local.storage/demo", timeout=30,
                             headers={"Authorization": f"Bearer {t['access_token']}"})
        assert r.status_code == 500
        body = r.json()
        assert body["status"] == "error" and body["version"] == "2.2.27"
        assert "simulated bug" not in r.text and "Traceback" not in r.text
        assert any("simulated bug" in (rec.exc_text or "") or rec.exc_info for rec in caplog.records)
        assert t["access_token"] not in caplog.text
        # the server is still fine afterwards
        assert requests.get(f"{emu.url}/systems/v2", timeout=30,
                            headers={"Authorization": f"Bearer {t['access_token']}"}).status_code == 200
    finally:
        emu.stop()
