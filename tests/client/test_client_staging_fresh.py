"""``staging_state(..., fresh=True)``: the write-back's unique temporary names.

One history request per look (the first page decides), the listing length asked
beside it, and a server that caps pages below the history's length still ends in
STORED, a few looks late.
"""

from __future__ import annotations

import time

import pytest

from agavefs.client import AgaveClient, Credentials
from client_stub import Stub, entry, wrap

HISTORY = "/files/v2/history/system/stub/"
LISTING = "/files/v2/listings/system/stub/"


@pytest.fixture
def stub():
    s = Stub().start()
    yield s
    s.stop()


def make_client(stub) -> AgaveClient:
    creds = Credentials(baseurl=stub.url, username="demo", apikey="KEY-abcdef",
                        apisecret="APISECRET-abcdef", access_token="ACCESS-abcdef-1",
                        refresh_token="REFRESH-abcdef-1", created_at=str(int(time.time())),
                        expires_in="3600")
    return AgaveClient(creds, system_id="stub", op_timeout=5)


def event(status, t):
    return {"status": status, "created": t, "description": status.lower()}


def serve(stub, events, cap=None, length=5):
    def history(req, h):
        off, lim = int(req.query.get("offset", 0)), int(req.query.get("limit", 100))
        if cap:
            lim = min(lim, cap)
        h.send_json(200, wrap(events[off:off + lim]))

    stub.route("GET", HISTORY, history)
    stub.route("GET", LISTING, lambda req, h: h.send_json(200, wrap([entry("t", "/home/demo/t",
                                                                             length=length)])))


def test_a_fresh_upload_is_decided_by_one_history_page(stub):
    events = [event("CREATED", "t0"), event("STAGING_QUEUED", "t1")]
    serve(stub, events)
    with make_client(stub) as c:
        assert c.staging_state("/home/demo/t", 5, fresh=True).state.value == "pending"
        assert len(stub.seen("GET", HISTORY)) == 1
        events.append(event("STAGING_COMPLETED", "t2"))
        assert c.staging_state("/home/demo/t", 5, fresh=True).state.value == "stored"
        assert len(stub.seen("GET", HISTORY)) == 2  # one request per look, no probe
        assert c.staging_state("/home/demo/t", 6, fresh=True).state.value == "pending"  # length differs
    assert len(stub.seen("GET", LISTING)) == 3  # and the length is checked at every look


def test_a_fresh_failure_is_seen_at_once(stub):
    serve(stub, [event("STAGING_QUEUED", "t1"), event("STAGING_FAILED", "t2")])
    with make_client(stub) as c:
        assert c.staging_state("/home/demo/t", 5, fresh=True).state.value == "failed"


def test_a_server_capping_pages_below_the_history_still_ends_in_stored(stub):
    # a cap of 2: the outcome (index 2) is never on the first page
    serve(stub, [event("CREATED", "t0"), event("STAGING_QUEUED", "t1"), event("STAGING_COMPLETED", "t2")],
          cap=2)
    with make_client(stub) as c:
        states = [c.staging_state("/home/demo/t", 5, fresh=True).state.value for _ in range(8)]
    assert "stored" in states[:4]  # the periodic full check pages through


def test_without_fresh_a_capped_history_is_paged_as_before(stub):
    serve(stub, [event("STAGING_QUEUED", "t1"), event("STAGING_COMPLETED", "t2"),
                 event("STAGING_QUEUED", "t3")], cap=2)
    with make_client(stub) as c:
        assert c.staging_state("/home/demo/t", 5).state.value == "pending"  # t3 is the newest
