"""The centre server's API on a real Mosquitto: logins, roles, sessions, bad input, accounts."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from sqlalchemy import update

from guetteur.centre.db.engine import Database
from guetteur.centre.db.schema import sessions
from guetteur.uplink import protocol
from tests.centre.harness import PASSWORD, Centre
from tests.fixtures.broker import MosquittoBroker
from tests.fixtures.waiting import wait_for
from tests.recorder import Recorder


@pytest.mark.slow
def test_logins_sessions_roles_and_rate_limit(
    broker: MosquittoBroker, centre_server: Callable[..., Centre]
) -> None:
    centre = centre_server(broker)
    anon = centre.anonymous()
    assert anon.error("GET", "/api/events") == (401, "unauthenticated")
    assert anon.ok("GET", "/api/health")["database"] is True
    assert anon.error("POST", "/api/login", {"username": "op1", "password": "nope"}) == (
        401,
        "bad_credentials",
    )
    assert anon.error("POST", "/api/login", {"username": "op1"})[1] == "bad_request"
    assert anon.error("GET", "/api/no/such/route") == (404, "not_found")

    op = centre.login("op1")
    me = op.ok("GET", "/api/me")
    assert (
        me["role"] == "operator"
        and "ptz" in me["permissions"]
        and "export" not in me["permissions"]
    )
    assert op.ok("GET", "/api/events")["events"] == []
    # a role without the right
    assert op.error("GET", "/api/register") == (403, "forbidden")
    assert centre.login("view1").error("POST", "/api/gateways/gw1/cameras/cam1/ptz",
                                       {"action": "stop"}) == (403, "forbidden")  # fmt: skip
    assert centre.login("aud1").error("GET", "/api/events") == (403, "forbidden")
    assert centre.login("aud1").ok("GET", "/api/register/verify")["verified"] is True

    # an expired session
    db = Database(centre.config.database.url)
    with db.write() as conn:
        conn.execute(update(sessions).values(expires="2000-01-01T00:00:00.000Z"))
    db.dispose()
    assert op.error("GET", "/api/me") == (401, "session_expired")
    op = centre.login("op1")
    op.ok("POST", "/api/logout")
    assert op.error("GET", "/api/me") == (401, "unauthenticated")

    # repeated failures: logins pause, even with the right password, and the log says so
    for _ in range(5):
        anon.error("POST", "/api/login", {"username": "op2", "password": "wrong"})
    assert anon.error("POST", "/api/login", {"username": "op2", "password": PASSWORD}) == (
        429,
        "rate_limited",
    )


@pytest.mark.slow
def test_cookie_sessions_refuse_cross_site_requests(
    broker: MosquittoBroker, centre_server: Callable[..., Centre]
) -> None:
    centre = centre_server(broker)
    anon = centre.anonymous()
    status, raw, headers = anon.call(
        "POST", "/api/login", {"username": "adm1", "password": PASSWORD}
    )
    assert status == 200
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    jar = {"Cookie": cookie.split(";")[0]}
    body = {"username": "x1", "role": "viewer", "password": "long enough pw"}
    status, raw, _ = anon.call(
        "POST", "/api/users", body, headers={**jar, "Origin": "http://evil.example"}
    )
    assert status == 403 and json.loads(raw)["error"]["code"] == "cross_origin"
    host = centre.url.split("://")[1]
    status, raw, _ = anon.call(
        "POST", "/api/users", body, headers={**jar, "Origin": f"http://{host}"}
    )
    assert status == 201, raw


@pytest.mark.slow
def test_accounts_are_managed_by_admins_and_every_change_is_registered(
    broker: MosquittoBroker, centre_server: Callable[..., Centre]
) -> None:
    centre = centre_server(broker)
    adm = centre.login("adm1")
    assert centre.login("sup1").error("GET", "/api/users") == (403, "forbidden")
    assert adm.error("POST", "/api/users", {"username": "bad/name", "role": "viewer",
                                            "password": "long enough pw"})[1] == "bad_request"  # fmt: skip
    assert adm.error("POST", "/api/users", {"username": "v9", "role": "root",
                                            "password": "long enough pw"})[1] == "bad_request"  # fmt: skip
    assert adm.error("POST", "/api/users", {"username": "v9", "role": "viewer",
                                            "password": "short"})[1] == "bad_request"  # fmt: skip
    adm.ok("POST", "/api/users", {"username": "v9", "role": "viewer", "password": "long enough pw"})
    v9 = centre.login("v9", "long enough pw")
    v9.ok("GET", "/api/me")
    adm.ok("POST", "/api/users/v9/disable", {"disabled": True})
    assert v9.error("GET", "/api/me") == (401, "unauthenticated")  # its sessions ended
    assert centre.anonymous().error(
        "POST", "/api/login", {"username": "v9", "password": "long enough pw"}
    ) == (401, "bad_credentials")
    adm.ok("POST", "/api/users/v9/disable", {"disabled": False})
    adm.ok("POST", "/api/users/v9/reset", {"password": "another long pw", "role": "operator"})
    assert centre.login("v9", "another long pw").ok("GET", "/api/me")["role"] == "operator"
    token = adm.ok("POST", "/api/users/v9/tokens", {"days": 1, "label": "script"})["token"]
    script = centre.anonymous()
    script.token = token
    assert script.ok("GET", "/api/me")["kind"] == "api"

    rows = centre.login("aud1").ok("GET", "/api/register", action="account")["rows"]
    actions = [(r["action"], r["operator"], r["detail"].get("user")) for r in rows]
    assert ("account.add", "adm1", "v9") in actions
    assert ("account.disable", "adm1", "v9") in actions
    assert ("account.enable", "adm1", "v9") in actions
    assert ("account.reset", "adm1", "v9") in actions
    assert ("account.token", "adm1", "v9") in actions


@pytest.mark.slow
def test_marking_an_event_handled_needs_the_event_and_shows_who_and_why(
    broker: MosquittoBroker, centre_server: Callable[..., Centre]
) -> None:
    """The console's "mark as handled": kept in the register under the event's camera, shown
    with the event; an event the centre never received is refused (it used to be registered)."""
    centre = centre_server(broker)
    gateway = Recorder(broker.url, "unused/#").start()
    try:
        body = {"id": "e1:0", "event_id": "e1", "type": "start", "seq": 0, "score": 0.5}
        gateway.publish_raw(f"{protocol.DEFAULT_ROOT}/gwx/cam/cam7/event", protocol.dumps(body))
        op = centre.login("op1")
        wait_for(lambda: op.ok("GET", "/api/events")["events"], 10, "the event stored")
    finally:
        gateway.stop()
    assert op.error("POST", "/api/events/gwx/nope/handled", {"comment": "?"}) == (404, "not_found")
    assert op.ok("GET", "/api/events/gwx/e1")["handled"] == []
    op.ok("POST", "/api/events/gwx/e1/handled", {"comment": "Patrouille prévenue"})
    handled = op.ok("GET", "/api/events/gwx/e1")["handled"]
    assert [(h["operator"], h["comment"]) for h in handled] == [("op1", "Patrouille prévenue")]
    rows = centre.login("aud1").ok("GET", "/api/register", action="event.handled")["rows"]
    assert [(r["camera"], r["detail"]["event_id"]) for r in rows] == [("cam7", "e1")]
