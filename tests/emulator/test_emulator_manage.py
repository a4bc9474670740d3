"""PUT actions (mkdir, rename, move, copy) and DELETE, with the reference's statuses."""

from __future__ import annotations

import pytest

from emu_client import Api


@pytest.fixture
def work(sapi: Api, request) -> str:
    """A fresh directory under demo's home for one test."""
    name = request.node.name.replace("[", "_").replace("]", "")
    assert sapi.mkdir("demo", name).status_code == 201
    return f"demo/{name}"


def test_mkdir_statuses(sapi, work):
    r = sapi.mkdir(work, "a")
    assert r.status_code == 201 and r.json()["result"]["path"] == f"/home/{work}/a"
    r = sapi.mkdir(work, "a")
    assert r.status_code == 200 and r.json()["message"] == f"Directory /home/{work}/a already exists"
    r = sapi.mkdir(work, "deep/er/est")                      # intermediate dirs are created
    assert r.status_code == 201 and (sapi.emu.home() / work[5:] / "deep" / "er" / "est").is_dir()
    (sapi.emu.home() / work[5:] / "file").write_bytes(b"x")
    r = sapi.mkdir(work, "file")
    assert r.status_code == 400 and r.json()["message"] == f"A file already exists at /home/{work}/file"
    r = sapi.mkdir(work, "file/below")
    assert r.status_code == 400
    r = sapi.mkdir(f"{work}/missing", "x")                   # URL parent missing
    assert r.status_code == 404
    r = sapi.s.put(sapi.files("media", work), json={"action": "mkdir", "path": "viajson"}, timeout=30)
    assert r.status_code == 201
    r = sapi.s.put(sapi.files("media", work), data={"action": "mkdir"}, timeout=30)
    assert r.status_code == 400
    r = sapi.mkdir(work, "with space#?%+ünï")
    assert r.status_code == 201 and sapi.list(f"{work}/with space#?%+ünï").status_code == 200
    assert sapi.mkdir(work, "d" * 255).status_code == 201
    assert sapi.mkdir(work, "d" * 256).status_code == 400


def test_rename(sapi, work):
    sapi.put_file(work, "one.txt", b"1")
    sapi.put_file(work, "two.txt", b"2")
    r = sapi.manage(f"{work}/one.txt", "rename", "uno.txt")
    assert r.status_code == 200 and r.json()["message"] == "Rename success"
    assert r.json()["result"]["path"] == f"/home/{work}/uno.txt"
    r = sapi.manage(f"{work}/uno.txt", "rename", "two.txt")   # target exists
    assert r.status_code == 400 and "already exists" in r.json()["message"]
    assert sapi.download(f"{work}/two.txt").content == b"2"
    r = sapi.manage(f"{work}/uno.txt", "rename")
    assert r.status_code == 400
    r = sapi.manage(f"{work}/nope.txt", "rename", "x")
    assert r.status_code == 404
    sapi.mkdir(work, "dir")
    assert sapi.manage(f"{work}/dir", "rename", "Dir2", json=True).status_code == 200
    assert sapi.names(work)[1:] == ["Dir2", "two.txt", "uno.txt"]


def test_move(sapi, work):
    sapi.put_file(work, "m.txt", b"move me")
    sapi.mkdir(work, "dest")
    r = sapi.manage(f"{work}/m.txt", "move", f"{work}/dest/m.txt")      # home-relative destination
    assert r.status_code == 200 and r.json()["message"] == "Move success"
    assert sapi.download(f"{work}/dest/m.txt").content == b"move me"
    r = sapi.manage(f"{work}/dest/m.txt", "move", f"/home/{work}/m2.txt")  # absolute destination
    assert r.status_code == 200 and sapi.list(f"{work}/m2.txt").status_code == 200
    sapi.put_file(work, "other.txt", b"other")
    r = sapi.manage(f"{work}/m2.txt", "move", f"{work}/other.txt")        # destination exists
    assert r.status_code == 400
    assert sapi.download(f"{work}/other.txt").content == b"other"
    assert sapi.download(f"{work}/m2.txt").content == b"move me"
    r = sapi.manage(f"{work}/m2.txt", "move", f"{work}/dest")             # a folder is there
    assert r.status_code == 400
    r = sapi.manage(f"{work}/dest", "move", f"{work}/dest/inside")       # into itself
    assert r.status_code == 400
    r = sapi.manage(f"{work}/m2.txt", "move", f"{work}/nodir/x")          # destination parent missing
    assert r.status_code == 404
    r = sapi.manage(f"{work}/m2.txt", "move")
    assert r.status_code == 400


def test_racing_moves_of_one_source_are_one_success_and_404s(sapi, work):
    """Concurrent moves of the same file: one wins; the others find it gone, a 404
    (the service's answer for a missing source), never a 400 "Failed to move" from a
    source checked before another request took it."""
    import copy
    import threading

    import requests

    sapi.mkdir(work, "dest")
    sessions = []
    for _ in range(6):  # the same token (one per OAuth client), a connection each
        twin = copy.copy(sapi)
        twin.s = requests.Session()
        twin.s.trust_env, twin.s.verify = False, sapi.s.verify
        twin.s.headers.update(sapi.s.headers)
        sessions.append(twin)
    for round_ in range(15):
        sapi.put_file(work, "src.txt", b"x")
        statuses: list[int] = []
        go = threading.Barrier(len(sessions))

        def move(api, i):
            go.wait()
            statuses.append(api.manage(f"{work}/src.txt", "move", f"{work}/dest/r{round_}-{i}").status_code)

        threads = [threading.Thread(target=move, args=(a, i)) for i, a in enumerate(sessions)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(statuses) == [200] + [404] * (len(sessions) - 1), statuses


def test_copy_overwrites_and_merges(sapi, work):
    home = sapi.emu.home() / work[5:]
    (home / "src" / "sub").mkdir(parents=True)
    (home / "src" / "a").write_bytes(b"new a")
    (home / "src" / "sub" / "b").write_bytes(b"new b")
    (home / "dst" / "sub").mkdir(parents=True)
    (home / "dst" / "a").write_bytes(b"old a")
    (home / "dst" / "keep").write_bytes(b"kept")
    (home / "dst" / "sub" / "c").write_bytes(b"kept c")
    r = sapi.manage(f"{work}/src", "copy", f"{work}/dst")
    assert r.status_code == 200 and r.json()["message"] == "Copy success"
    assert (home / "dst" / "a").read_bytes() == b"new a"
    assert (home / "dst" / "keep").read_bytes() == b"kept"
    assert (home / "dst" / "sub" / "b").read_bytes() == b"new b"
    assert (home / "dst" / "sub" / "c").read_bytes() == b"kept c"
    assert (home / "src" / "a").read_bytes() == b"new a"                  # source untouched
    r = sapi.manage(f"{work}/src/a", "copy", f"{work}/dst/keep")          # file over file
    assert r.status_code == 200 and (home / "dst" / "keep").read_bytes() == b"new a"
    r = sapi.manage(f"{work}/src/a", "copy", f"/home/{work}/fresh")       # absolute, new
    assert r.status_code == 200 and (home / "fresh").read_bytes() == b"new a"
    assert sapi.manage(f"{work}/src", "copy", f"{work}/src").status_code == 400
    assert sapi.manage(f"{work}/src", "copy", f"{work}/src/sub/x").status_code == 400
    assert sapi.manage(f"{work}/src/a", "copy").status_code == 400
    assert sapi.manage(f"{work}/src/a", "copy", f"{work}/dst").status_code == 400  # file onto a folder


def test_unknown_and_missing_action(sapi, work):
    r = sapi.manage(work, "explode", "x")
    assert r.status_code == 501 and r.json()["status"] == "error"
    r = sapi.s.put(sapi.files("media", work), data={"path": "x"}, timeout=30)
    assert r.status_code == 400 and r.json()["message"] == "Please provide a file action to perform"
    r = sapi.s.put(sapi.files("media", work), data=b"{not json", timeout=30,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    r = sapi.s.put(sapi.files("media", work), json=["mkdir"], timeout=30)
    assert r.status_code == 400
    r = sapi.s.put(sapi.files("media", work), data=b"x" * (2 << 20), timeout=30,
                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413
    assert sapi.names(work) == ["."]


def test_delete(sapi, work):
    home = sapi.emu.home() / work[5:]
    (home / "tree" / "a" / "b").mkdir(parents=True)
    (home / "tree" / "a" / "b" / "f").write_bytes(b"x")
    (home / "single").write_bytes(b"x")
    r = sapi.delete(f"{work}/tree")
    assert r.status_code == 200 and r.json()["status"] == "success"
    assert not (home / "tree").exists()
    r = sapi.delete(f"{work}/single", naked="true")
    assert r.status_code == 204 and r.content == b""
    assert not (home / "single").exists()
    r = sapi.delete(f"{work}/single")
    assert r.status_code == 404
    assert sapi.delete("demo").status_code == 403           # the home itself is protected
    assert sapi.emu.home().is_dir()


def test_deleted_file_history_and_recreate(sapi, work):
    sapi.put_file(work, "gone.txt", b"1")
    assert sapi.delete(f"{work}/gone.txt").status_code == 200
    assert sapi.events(f"{work}/gone.txt")[-1] == "DELETED"
    sapi.put_file(work, "gone.txt", b"2")
    assert sapi.events(f"{work}/gone.txt")[-3:] == ["CREATED", "STAGING_QUEUED", "STAGING_COMPLETED"]
