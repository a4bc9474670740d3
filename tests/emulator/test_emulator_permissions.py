"""Authorization: each user owns their home; everything else needs a pems grant."""

from __future__ import annotations

import pytest

from emu_client import Api

USERS = (("demo", "demo"), ("bob", "bobpw"), ("carol", "carolpw"))


@pytest.fixture
def trio(emulator_factory):
    emu = emulator_factory(users=USERS)
    bob = Api(emu, "bob", "bobpw")
    (emu.home("bob") / "shared" / "sub").mkdir(parents=True)
    (emu.home("bob") / "shared" / "doc.txt").write_bytes(b"bob's doc")
    (emu.home("bob") / "shared" / "sub" / "deep.txt").write_bytes(b"deep")
    (emu.home("bob") / "private.txt").write_bytes(b"secret")
    (emu.home("demo") / "mine.txt").write_bytes(b"demo's")
    return emu, Api(emu), bob, Api(emu, "carol", "carolpw")


def snapshot(root):
    return sorted((str(p.relative_to(root)), p.read_bytes() if p.is_file() else None)
                  for p in root.rglob("*"))


def denied(r, *codes):
    assert r.status_code in (codes or (403,)), (r.status_code, r.text)
    assert r.json()["status"] == "error"


def test_no_access_to_another_home(trio):
    emu, demo, bob, _ = trio
    before = snapshot(emu.home("bob"))
    denied(demo.list("bob"))
    denied(demo.list("bob/shared"))
    denied(demo.download("bob/private.txt"))
    denied(demo.history("bob/private.txt"))
    denied(demo.s.get(demo.files("pems", "bob/private.txt"), timeout=30))
    denied(demo.upload("bob/shared", "x.txt", b"intrusion"), 400)  # multipart branch: always 400
    denied(demo.mkdir("bob", "x"))
    denied(demo.mkdir("demo", "../bob/x"))
    denied(demo.delete("bob/private.txt"))
    denied(demo.delete("bob/shared"))
    denied(demo.manage("bob/private.txt", "rename", "x"))
    denied(demo.manage("demo/mine.txt", "rename", "../bob/mine.txt"))       # rename into bob's space
    denied(demo.manage("demo/mine.txt", "move", "bob/mine.txt"))             # move into
    denied(demo.manage("demo/mine.txt", "move", "/home/bob/shared/mine.txt"))
    denied(demo.manage("demo/mine.txt", "copy", "bob/shared/mine.txt"))      # copy into
    denied(demo.manage("bob/private.txt", "copy", "demo/stolen.txt"))        # copy out
    denied(demo.manage("bob/private.txt", "move", "demo/stolen.txt"))
    denied(demo.s.post(demo.files("pems", "bob/private.txt"), json={"username": "demo", "permission": "ALL"},
                       timeout=30))
    denied(demo.s.delete(demo.files("pems", "bob/private.txt"), timeout=30))
    # outside every home
    denied(demo.list(""))                   # /home itself (home-relative empty path)
    denied(demo.s.get(f"{demo.url}/files/v2/listings//", timeout=30))
    denied(demo.mkdir("", "intruder"))
    assert snapshot(emu.home("bob")) == before
    assert not (emu.home("demo") / "stolen.txt").exists()
    assert (emu.home("demo") / "mine.txt").read_bytes() == b"demo's"


def test_grants(trio):
    emu, demo, bob, carol = trio
    pems = bob.files("pems", "bob/shared")
    r = bob.s.post(pems, json={"username": "demo", "permission": "READ", "recursive": True}, timeout=30)
    assert r.status_code == 201, r.text
    grant = r.json()["result"][0]
    assert grant["username"] == "demo" and grant["permission"] == {"read": True, "write": False, "execute": False}
    assert grant["recursive"] is True
    listed = bob.s.get(pems, timeout=30).json()["result"]
    assert [(p["username"], p["permission"]["write"]) for p in listed] == [("bob", True), ("demo", False)]
    # demo can read now, recursively, but not write
    assert [e["name"] for e in demo.list("bob/shared").json()["result"]] == [".", "doc.txt", "sub"]
    assert demo.list("bob/shared").json()["result"][1]["permissions"] == "READ"
    assert demo.download("bob/shared/sub/deep.txt").content == b"deep"
    assert demo.s.get(demo.files("pems", "bob/shared"), timeout=30).status_code == 200
    denied(demo.list("bob"))
    denied(demo.download("bob/private.txt"))
    denied(demo.upload("bob/shared", "x.txt", b"x"), 400)
    denied(demo.mkdir("bob/shared", "new"))
    denied(demo.delete("bob/shared/doc.txt"))
    assert demo.manage("bob/shared/doc.txt", "copy", "demo/copy.txt").status_code == 200
    assert (emu.home("demo") / "copy.txt").read_bytes() == b"bob's doc"
    denied(carol.list("bob/shared"))
    # only the owner may grant, even with write access
    r = bob.s.post(pems, data={"username": "demo", "permission": "READ_WRITE", "recursive": "true"}, timeout=30)
    assert r.status_code == 201
    denied(demo.s.post(pems, json={"username": "carol", "permission": "READ"}, timeout=30))
    assert demo.mkdir("bob/shared", "new").status_code == 201
    assert demo.upload("bob/shared/new", "up.txt", b"from demo").status_code == 202
    demo.wait_length("bob/shared/new/up.txt", 9)
    assert demo.manage("bob/shared/doc.txt", "rename", "doc2.txt").status_code == 200
    assert demo.delete("bob/shared/doc2.txt").status_code == 200
    denied(demo.manage("bob/shared", "rename", "hijacked"))   # that writes in /home/bob
    # NONE clears (200); DELETE clears everything
    r = bob.s.post(pems, json={"username": "demo", "permission": "NONE", "recursive": True}, timeout=30)
    assert r.status_code == 200
    denied(demo.list("bob/shared"))
    bob.s.post(pems, json={"username": "carol", "permission": "READ"}, timeout=30)
    assert carol.list("bob/shared").status_code == 200
    assert carol.list("bob/shared/sub").status_code == 403           # not recursive
    assert bob.s.delete(pems, timeout=30).status_code == 200
    denied(carol.list("bob/shared"))
    assert [p["username"] for p in bob.s.get(pems, timeout=30).json()["result"]] == ["bob"]
    assert "PERMISSION_GRANT" in bob.events("bob/shared")


def test_pems_bad_input(trio):
    emu, demo, bob, _ = trio
    pems = bob.files("pems", "bob/shared")
    assert bob.s.post(pems, json={"permission": "READ"}, timeout=30).status_code == 400
    assert bob.s.post(pems, json={"username": "demo", "permission": "FLY"}, timeout=30).status_code == 400
    assert bob.s.post(pems, json={"username": "nobody", "permission": "READ"}, timeout=30).status_code == 400
    assert bob.s.post(bob.files("pems", "bob/none"), json={"username": "demo", "permission": "READ"},
                      timeout=30).status_code == 404


def test_symlink_into_another_home_gives_nothing(trio):
    emu, demo, bob, _ = trio
    (emu.home("demo") / "peek").symlink_to(emu.home("bob"))
    (emu.home("demo") / "peekfile").symlink_to(emu.home("bob") / "private.txt")
    (emu.home("demo") / "ownlink").symlink_to(emu.home("demo") / "mine.txt")
    denied(demo.list("demo/peek"))
    denied(demo.download("demo/peekfile"))
    denied(demo.download("demo/peek/private.txt"))
    denied(demo.upload("demo/peek", "x", b"x"), 400)
    denied(demo.mkdir("demo/peek", "x"))
    denied(demo.delete("demo/peek/private.txt"))
    assert demo.download("demo/ownlink").content == b"demo's"      # a link inside one's own home works
    assert (emu.home("bob") / "private.txt").read_bytes() == b"secret"
