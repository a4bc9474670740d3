"""Listings: self entry, paging, ordering, fields, URL forms and common parameters."""

from __future__ import annotations

import os
import re

import pytest
import requests

from emu_client import Api

LAST_MODIFIED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d")


@pytest.fixture(scope="module")
def tree(sapi: Api):
    """demo/lst with 25 files whose names sort differently by case, and one sub-directory."""
    home = sapi.emu.home()
    d = home / "lst"
    d.mkdir()
    names = [f"{c}{i:02d}" for i, c in enumerate("aBcDeFgHiJkLmNoPqRsTuVwXy")]
    for n in names:
        (d / n).write_bytes(n.encode() * 3)
    (d / "Sub").mkdir()
    return sorted(names + ["Sub"], key=str.casefold)


def test_self_entry_and_fields(sapi, tree):
    r = sapi.list("demo/lst")
    assert r.status_code == 200
    result = r.json()["result"]
    me = result[0]
    assert me["name"] == "." and me["path"] == "/home/demo/lst"
    assert me["type"] == "dir" and me["format"] == "folder" and me["mimeType"] == "text/directory"
    assert me["length"] == 4096 and me["permissions"] == "ALL" and me["system"] == "local.storage"
    assert LAST_MODIFIED.fullmatch(me["lastModified"]), me["lastModified"]
    assert me["_links"]["self"]["href"].endswith("/files/v2/media/system/local.storage//home/demo/lst")
    child = result[1]
    assert child["name"] == tree[0] and child["path"] == f"/home/demo/lst/{tree[0]}"
    assert child["type"] == "file" and child["format"] == "raw" and child["length"] == 9
    assert LAST_MODIFIED.fullmatch(child["lastModified"])
    assert set(child) >= {"name", "path", "lastModified", "length", "permissions", "format", "mimeType",
                          "type", "system", "_links"}
    sub = next(e for e in result if e["name"] == "Sub")
    assert sub["type"] == "dir" and sub["length"] == 4096 and sub["mimeType"] == "text/directory"


def test_children_sorted_case_insensitively(sapi, tree):
    assert sapi.names("demo/lst")[1:] == tree


def test_paging_virtual_list_with_self_first(sapi, tree):
    assert len(tree) == 26
    page0 = sapi.names("demo/lst", limit=10, offset=0)
    assert page0 == ["."] + tree[:9]
    page1 = sapi.names("demo/lst", limit=10, offset=10)
    assert page1 == tree[9:19]
    page2 = sapi.names("demo/lst", limit=10, offset=20)
    assert page2 == tree[19:]            # shorter than limit: the end
    assert sapi.names("demo/lst", limit=10, offset=30) == []
    assert sapi.names("demo/lst", offset=1) == tree  # default limit 100
    assert sapi.names("demo/lst", limit=1) == ["."]


def test_default_limit_is_100(sapi):
    d = sapi.emu.home() / "many"
    d.mkdir()
    for i in range(150):
        (d / f"f{i:03d}").write_bytes(b"")
    names = sapi.names("demo/many")
    assert len(names) == 100 and names[0] == "." and names[-1] == "f098"
    assert sapi.names("demo/many", offset=100) == [f"f{i:03d}" for i in range(99, 150)]


def test_max_page_caps_limit(emulator_factory):
    emu = emulator_factory("--max-page", "3")
    api = Api(emu)
    for n in "abcde":
        (emu.home() / n).write_bytes(b"x")
    assert api.names("demo", limit=100) == [".", "a", "b"]
    assert api.names("demo", limit=100, offset=3) == ["c", "d", "e"]
    assert api.names("demo", limit=2) == [".", "a"]


def test_listing_a_file_is_one_element(sapi, tree):
    r = sapi.list(f"demo/lst/{tree[0]}")
    assert r.status_code == 200
    result = r.json()["result"]
    assert len(result) == 1 and result[0]["name"] == tree[0] and result[0]["type"] == "file"
    assert result[0]["mimeType"]


def test_missing_path_404(sapi):
    r = sapi.list("demo/no/such/thing")
    assert r.status_code == 404
    assert r.json() == {"status": "error", "message": "File/folder does not exist", "version": "2.2.27"}


def test_bad_paging_parameters(sapi, tree):
    for params in ({"limit": "x"}, {"offset": "-1"}, {"limit": "-5"}):
        r = sapi.list("demo/lst", **params)
        assert r.status_code == 400 and r.json()["status"] == "error"


def test_url_forms_agree(sapi, tree):
    url, s = sapi.url, sapi.s
    expected = sapi.names("demo/lst")
    forms = [
        f"{url}/files/v2/listings/system/local.storage/demo/lst",        # home-relative
        f"{url}/files/v2/listings/system/local.storage//home/demo/lst",  # //absolute
        f"{url}/files/v2/listings/demo/lst",                             # default system, relative
        f"{url}/files/v2/listings//home/demo/lst",                       # default system, absolute
        f"{url}/files/v2/listings/system/local.storage/demo/lst/",       # trailing slash
        f"{url}/files/v2/listings/system/local.storage/demo%2Flst",      # %2F decodes to /
        f"{url}/files/v2/listings/system/local.storage/%2Fhome%2Fdemo%2Flst",
    ]
    for form in forms:
        r = s.get(form, timeout=30)
        assert r.status_code == 200, (form, r.text)
        assert [e["name"] for e in r.json()["result"]] == expected, form
        assert r.json()["result"][0]["path"] == "/home/demo/lst"


def test_unknown_system_404(sapi):
    r = sapi.s.get(f"{sapi.url}/files/v2/listings/system/nope/demo", timeout=30)
    assert r.status_code == 404 and r.json()["status"] == "error"


def test_naked_pretty_filter(sapi, tree):
    r = sapi.list("demo/lst", naked="true")
    assert isinstance(r.json(), list) and r.json()[0]["name"] == "."
    r = sapi.list("demo/lst", pretty="true")
    assert "\n  " in r.text and r.json()["status"] == "success"
    r = sapi.list("demo/lst", filter="name,length", limit=3)
    assert r.json()["result"] == [{"name": ".", "length": 4096},
                                  {"name": tree[0], "length": 9}, {"name": tree[1], "length": 9}]
    r = sapi.list("demo/lst", filter="name,_links.self", limit=1, naked="true")
    assert list(r.json()[0]) == ["name", "_links"] and list(r.json()[0]["_links"]) == ["self"]
    r = sapi.s.get(f"{sapi.url}/profiles/v2/me", params={"naked": "true", "filter": "username"}, timeout=30)
    assert r.json() == {"username": "demo"}


def test_utf8_and_special_names_listed(sapi):
    d = sapi.emu.home() / "special"
    d.mkdir()
    names = ["with space", "hash#tag", "per%cent", "quest?ion", "plus+sign", "ünïcødé ☃", "a&b=c"]
    for n in names:
        (d / n).write_bytes(n.encode())
    assert sapi.names("demo/special")[1:] == sorted(names, key=str.casefold)
    for n in names:
        r = sapi.list(f"demo/special/{n}")
        assert r.status_code == 200, (n, r.text)
        assert r.json()["result"][0]["name"] == n
        assert sapi.download(f"demo/special/{n}").content == n.encode()
    # "+" is not a space
    assert sapi.s.get(f"{sapi.url}/files/v2/listings/system/local.storage/demo/special/with+space",
                      timeout=30).status_code == 404


def test_state_dir_is_never_listed(sapi):
    root = sapi.emu.root
    assert (root / ".agave-emulator").is_dir()
    # nobody may list / (it is outside every home), and the hidden name resolves to nothing
    assert sapi.s.get(f"{sapi.url}/files/v2/listings//", timeout=30).status_code == 403
    r = sapi.s.get(f"{sapi.url}/files/v2/listings//.agave-emulator", timeout=30)
    assert r.status_code == 404
    r = sapi.s.get(f"{sapi.url}/files/v2/media//.agave-emulator/state.sqlite", timeout=30)
    assert r.status_code == 404


def test_last_modified_is_server_local_time(emulator_factory, monkeypatch):
    monkeypatch.setenv("TZ", "America/Chicago")
    emu = emulator_factory()
    api = Api(emu)
    f = emu.home() / "tz.txt"
    f.write_bytes(b"x")
    os.utime(f, (1500575310.123, 1500575310.123))     # 2017-07-20T18:28:30.123Z
    entry = api.list("demo/tz.txt").json()["result"][0]
    assert entry["lastModified"] == "2017-07-20T13:28:30.123-05:00"   # the reference's example


def test_systems_and_profiles(sapi):
    s, url = sapi.s, sapi.url
    systems = s.get(f"{url}/systems/v2/", timeout=30).json()["result"]
    assert [x["id"] for x in systems] == ["local.storage"]
    assert systems[0]["type"] == "STORAGE" and systems[0]["default"] is True and systems[0]["status"] == "UP"
    assert s.get(f"{url}/systems/v2?type=STORAGE", timeout=30).json()["result"] == systems
    assert s.get(f"{url}/systems/v2?default=true", timeout=30).json()["result"] == systems
    assert s.get(f"{url}/systems/v2?type=EXECUTION", timeout=30).json()["result"] == []
    one = s.get(f"{url}/systems/v2/local.storage", timeout=30).json()["result"]
    storage = one["storage"]
    assert storage["rootDir"] == str(sapi.emu.root.resolve()) and storage["homeDir"] == "/home"
    assert {"host", "port", "protocol"} <= set(storage)
    assert s.get(f"{url}/systems/v2/other", timeout=30).status_code == 404
    assert s.get(f"{url}/profiles/v2/me/", timeout=30).json()["result"]["username"] == "demo"
    assert s.get(f"{url}/profiles/v2/bob", timeout=30).json()["result"]["username"] == "bob"
    assert s.get(f"{url}/profiles/v2/nobody", timeout=30).status_code == 404


def test_unknown_route_and_wrong_method(sapi):
    r = sapi.s.get(f"{sapi.url}/nothing/here", timeout=30)
    assert r.status_code == 404 and r.json()["status"] == "error"
    r = sapi.s.patch(sapi.files("media", "demo"), timeout=30)
    assert r.status_code == 405 and "PUT" in r.headers["Allow"]
    assert r.json()["status"] == "error"
    r = sapi.s.put(sapi.files("listings", "demo"), data={"action": "mkdir", "path": "x"}, timeout=30)
    assert r.status_code == 405
    assert not (sapi.emu.home() / "x").exists()


def test_trailing_slash_and_default_system_on_every_route(sapi):
    s, url = sapi.s, sapi.url
    sapi.mkdir("demo", "slash")
    sapi.put_file("demo/slash", "t.txt", b"slash")
    tok = sapi.tok
    r = requests.post(f"{url}/token/", auth=(tok["apikey"], tok["apisecret"]), timeout=30,
                      data={"grant_type": "password", "username": "demo", "password": "demo"})
    assert r.status_code == 200
    extra = r.json()
    r = requests.post(f"{url}/revoke/", auth=(tok["apikey"], tok["apisecret"]), timeout=30,
                      data={"token": extra["access_token"]})
    assert r.status_code == 200
    assert requests.get(f"{url}/clients/v2/", auth=("demo", "demo"), timeout=30).status_code == 200
    assert requests.get(f"{url}/clients/v2/tests-demo/", auth=("demo", "demo"), timeout=30).status_code == 200
    for path in ("/profiles/v2/me/", "/systems/v2/", "/systems/v2/local.storage/",
                 "/files/v2/listings/system/local.storage/demo/slash/",
                 "/files/v2/history/system/local.storage/demo/slash/t.txt/",
                 "/files/v2/pems/system/local.storage/demo/slash/t.txt/",
                 "/files/v2/history/demo/slash/t.txt", "/files/v2/pems//home/demo/slash/t.txt/"):
        r = s.get(url + path, timeout=30)
        assert r.status_code == 200, (path, r.text)
    for path in ("/files/v2/media/system/local.storage/demo/slash/t.txt/", "/files/v2/media/demo/slash/t.txt",
                 "/files/v2/media//home/demo/slash/t.txt/"):
        assert s.get(url + path, timeout=30).content == b"slash", path
    r = s.put(f"{url}/files/v2/media/demo/slash/", data={"action": "mkdir", "path": "viadefault"}, timeout=30)
    assert r.status_code == 201
    r = s.post(f"{url}/files/v2/media//home/demo/slash/", files={"fileToUpload": ("d.txt", b"d")}, timeout=30)
    assert r.status_code == 202 and r.json()["result"]["path"] == "/home/demo/slash/d.txt"
    assert s.delete(f"{url}/files/v2/media/demo/slash/viadefault/", timeout=30).status_code == 200
