"""The operators' console in a real browser (Debian's headless Chromium through Selenium),
against a real centre server, a real Mosquitto and a real gateway (the agent, two generated
cameras, a Pelco-D dome on a socat pty). What an operator, an auditor and a viewer see and do,
checked in the page and on the peers: events with their snapshot, a live wall that really
plays (pixels drawn from the video element), a PTZ pad whose press and release reach the
serial line, the register naming the operator. The screenshots in docs/console/ come from here.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from csv import DictReader
from pathlib import Path
from typing import Any

import pytest

from guetteur.ptz.pelco_d import GOTO_PRESET, preset_frame
from guetteur.uplink import protocol
from guetteur.uplink.mqttutil import new_client
from tests.centre.harness import PASSWORD, Centre, gateway_config
from tests.centre.test_operations import STOP, PelcoReader
from tests.centre.test_operations import dome as dome
from tests.fixtures.broker import MosquittoBroker
from tests.fixtures.browser import wait_js
from tests.fixtures.media import MediaFactory
from tests.fixtures.serial import PtyPair
from tests.fixtures.signing import CentreKey
from tests.fixtures.waiting import wait_for

# The screenshots of docs/console.md are taken on every run (a page that cannot be drawn fails
# here); they replace the committed ones only with GUETTEUR_UPDATE_SCREENSHOTS=1 (`make
# console-shots`), so that `make test` leaves the working tree clean.
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"
UPDATE_SHOTS = os.environ.get("GUETTEUR_UPDATE_SCREENSHOTS") == "1"
WALK = "test:walk?start=2&end=4&duration=8&gop=1"

# mean brightness (0-255) of the video element's current frame, drawn to a canvas
FRAME_LEVEL = """
const v = document.querySelector(arguments[0] + ' video');
if (!v || v.readyState < 2) return -1;
const c = document.createElement('canvas'); c.width = 160; c.height = 90;
const g = c.getContext('2d'); g.drawImage(v, 0, 0, 160, 90);
const d = g.getImageData(0, 0, 160, 90).data; let s = 0;
for (let i = 0; i < d.length; i += 4) s += d[i] + d[i + 1] + d[i + 2];
return s / (d.length / 4) / 3;
"""


def login(driver: Any, centre: Centre, user: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(centre.url + "/")
    wait_js(driver, "document.body.dataset.ready === '1'", 15, "the console to load")
    wait_js(driver, "!document.querySelector('#login').hidden", 5, "the login form")
    form = driver.find_element(By.ID, "login-form")
    form.find_element(By.NAME, "username").send_keys(user)
    form.find_element(By.NAME, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "login-submit").click()
    wait_js(driver, "!document.querySelector('#app').hidden", 10, f"{user} logged in")


def shot(driver: Any, name: str) -> None:
    """A screenshot for docs/console.md: a 1280x720 page, 4 bits per colour channel (the
    generated scenes' noise made 700 KB files; this keeps them near 200 KB), then back to the
    1920x1080 desk screen."""
    import time

    import cv2
    import numpy as np

    metrics = {"width": 1280, "height": 720, "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    time.sleep(0.5)  # layout and a new video frame at the new size
    png = np.frombuffer(driver.get_screenshot_as_png(), np.uint8)
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    image = np.bitwise_and(np.asarray(cv2.imdecode(png, cv2.IMREAD_COLOR)), np.uint8(0xF0))
    ok, encoded = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok, f"{name}: the screenshot could not be encoded"
    if UPDATE_SHOTS:
        (SHOTS / name).write_bytes(encoded.tobytes())


def nav_shown(driver: Any) -> list[str]:
    views: list[str] = driver.execute_script(
        "return [...document.querySelectorAll('#nav button')].filter(b => !b.hidden)"
        ".map(b => b.dataset.view)"
    )
    return views


def open_view(driver: Any, view: str) -> None:
    driver.execute_script(f"document.querySelector('#nav button[data-view={view}]').click()")
    wait_js(driver, f"!document.querySelector('#view-{view}').hidden", 5, f"the {view} view")


def logout(driver: Any) -> None:
    driver.execute_script("document.querySelector('#logout').click()")
    wait_js(driver, "!document.querySelector('#login').hidden", 5, "the login form again")


def playing(driver: Any, tile: str) -> bool:
    """The tile's video advances and its frame is not black."""
    t0 = driver.execute_script(f"return document.querySelector('{tile} video').currentTime")
    wait_js(
        driver,
        f"document.querySelector('{tile} video').currentTime > {t0} + 0.4",
        15,
        f"{tile}'s video to advance",
    )
    level = float(driver.execute_script(FRAME_LEVEL, tile))
    assert level > 20, f"{tile}: the drawn frame is black (mean level {level:.1f})"
    return True


def ghost_gateway(broker: MosquittoBroker, state: str) -> None:
    """A gateway the centre knows by its retained status, and that never answers a command."""
    ghost = new_client("ghost-gw")
    ghost.connect(broker.host, broker.port)
    ghost.loop_start()
    body = protocol.dumps({"state": state, "gateway": "ghost", "reason": "power cut"})
    ghost.publish(f"{protocol.DEFAULT_ROOT}/ghost/status", body, 1, True).wait_for_publish(5)
    ghost.disconnect()
    ghost.loop_stop()


@pytest.mark.slow
def test_an_operator_auditor_and_viewer_at_the_console(
    broker: MosquittoBroker,
    centre_server: Callable[..., Centre],
    real_gateway: Callable[..., Any],
    dome: tuple[PtyPair, PelcoReader],
    browser: Callable[..., Any],
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    pty, pelco = dome
    centre = centre_server(broker, live={"lease_s": 5})
    cameras = [
        {"id": "cam1", "url": WALK, "ptz": {"protocol": "pelco-d", "serial_port": pty.gateway}},
        {"id": "cam2", "url": WALK + "&seed=7"},
    ]
    real_gateway(broker, cameras=cameras, live={"min_lease_s": 1.0, "max_sessions_per_operator": 4})
    ghost_gateway(broker, "offline")
    op = centre.login("op1")
    wait_for(
        lambda: (
            {g["gateway"]: g["state"] for g in op.ok("GET", "/api/gateways")["gateways"]}.get("gw1")
            == "online"
            and len(op.ok("GET", "/api/gateways")["gateways"]) == 2
        ),
        20,
        "gw1 online and the ghost gateway in the fleet",
    )
    driver = browser()

    # -- an operator: fleet, events, live wall, PTZ ---------------------------------------------
    login(driver, centre, "op1")
    assert nav_shown(driver) == ["fleet", "events", "live", "recordings"]  # no register
    wait_js(driver, "document.querySelectorAll('#fleet-list .gw').length === 2", 10, "the fleet")
    # problems first: the offline gateway's card comes before the healthy one
    order = driver.execute_script(
        "return [...document.querySelectorAll('#fleet-list .gw')].map(e => e.dataset.gateway)"
    )
    assert order == ["ghost", "gw1"]
    assert "hors ligne depuis" in driver.find_element(By.CSS_SELECTOR, ".gw.bad").text
    driver.find_element(By.ID, "fleet-search").send_keys("cam2")  # a camera finds its gateway
    wait_js(driver, "document.querySelectorAll('#fleet-list .gw').length === 1", 5, "the search")
    assert (
        driver.find_element(By.CSS_SELECTOR, "#fleet-list .gw").get_attribute("data-gateway")
        == "gw1"
    )
    driver.find_element(By.ID, "fleet-search").clear()
    driver.execute_script(
        "document.querySelector('#fleet-search').dispatchEvent(new Event('input'))"
    )
    shot(driver, "fleet.png")

    open_view(driver, "events")
    wait_js(
        driver,
        "[...document.querySelectorAll('#ev-list img.thumb')].some(i => i.complete && i.naturalWidth > 0)",
        45,
        "an event in the feed with its snapshot",
    )
    # cards are redrawn as messages arrive: find and click in one step
    text = driver.execute_script(
        "const c = document.querySelector('#ev-list .event img.thumb').closest('.event');"
        "c.click(); return c.textContent"
    )
    assert "cam1" in text or "cam2" in text
    wait_js(driver, "document.querySelector('#ev-comment')", 10, "the event's detail")
    comment = driver.find_element(By.ID, "ev-comment")
    comment.send_keys("Patrouille prévenue")
    driver.find_element(By.ID, "ev-handle").click()
    wait_js(
        driver,
        "document.querySelector('#ev-handled-status').textContent.includes('op1')",
        10,
        "the event marked as handled",
    )
    shot(driver, "events.png")

    # an event whose clip has arrived: a click plays it in the page
    def with_clip() -> str | None:
        for ev in op.ok("GET", "/api/events", type="end")["events"]:
            if (op.ok("GET", f"/api/events/gw1/{ev['event_id']}")["clip"] or {}).get("url"):
                return str(ev["event_id"])
        return None

    event_id = wait_for(with_clip, 60, "an event clip at the centre")
    driver.execute_script("document.querySelector('#ev-apply').click()")  # reload the list
    wait_js(driver, f"document.querySelector('#ev-list [data-key=\"gw1/{event_id}\"]')", 10,
            "the event with its clip in the list")  # fmt: skip
    driver.execute_script(
        f"document.querySelector('#ev-list [data-key=\"gw1/{event_id}\"]').click()"
    )
    wait_js(driver, "(v => v && v.currentTime > 0.5)(document.querySelector('#ev-clip'))", 20,
            "the event's clip playing in the page")  # fmt: skip

    open_view(driver, "live")
    Select(driver.find_element(By.ID, "wall-size")).select_by_value("2")
    wait_js(driver, "document.querySelectorAll('#wall .tile').length === 4", 5, "a 2x2 wall")
    wait_js(driver, "document.querySelectorAll('#tile-0 .tile-camera option').length > 2", 10,
            "the cameras in the tile pickers")  # fmt: skip
    for i, cam in enumerate(["cam1", "cam2", "cam2", "cam1"]):
        Select(driver.find_element(By.CSS_SELECTOR, f"#tile-{i} .tile-camera")).select_by_value(
            f"gw1/{cam}"
        )
    for i in range(4):
        assert playing(driver, f"#tile-{i}")
    shot(driver, "wall-2x2.png")

    # PTZ: press and hold "up" on tile 0's camera, release: a move then a stop on the line
    driver.find_element(By.ID, "tile-0").click()
    up = wait_for(
        lambda: driver.find_elements(
            By.CSS_SELECTOR, "#ptz-pad .ptz-btn[data-tilt='1'][data-pan='0']"
        ),
        5,
        "the PTZ pad",
    )[0]
    before = len(pelco.frames)
    ActionChains(driver).click_and_hold(up).pause(1.2).release().perform()
    wait_for(lambda: STOP in pelco.frames[before:], 5, "the stop on the serial line")
    sent = pelco.frames[before:]
    moves = [f for f in sent if f != STOP]
    assert moves and sent.index(moves[0]) < len(sent) - 1 - sent[::-1].index(STOP)
    assert moves[0][3] & 0x08, f"a tilt up (Pelco-D command 2 bit 3): {moves[0].hex(' ')}"
    wait_js(driver, "document.querySelector('.ptz-status').textContent.includes('op1')", 5,
            "who holds the camera")  # fmt: skip
    # pressed, then the window loses focus (another application, a dialog): the page stops
    before = len(pelco.frames)
    driver.execute_script(
        "document.querySelector(\"#ptz-pad .ptz-btn[data-pan='1'][data-tilt='0']\")"
        ".dispatchEvent(new PointerEvent('pointerdown', {bubbles: true, pointerId: 7}))"
    )
    wait_for(lambda: [f for f in pelco.frames[before:] if f != STOP], 5, "the move to the right")
    driver.execute_script("window.dispatchEvent(new Event('blur'))")
    wait_for(lambda: STOP in pelco.frames[before:], 5, "the stop on losing focus")
    # a preset: number 3, "Aller"
    preset = driver.find_element(By.CSS_SELECTOR, "#ptz .ptz-preset")
    preset.clear()
    preset.send_keys("3")
    driver.find_elements(By.CSS_SELECTOR, "#ptz .presets button")[0].click()
    goto3 = preset_frame(1, GOTO_PRESET, 3)
    wait_for(lambda: goto3 in pelco.frames, 5, "the dome sent to preset 3")

    # the tab hidden: every view stopped at the server; shown again: they resume
    server = centre.thread.server
    assert server is not None and server.services.relay is not None
    relay = server.services.relay

    def relayed() -> int:
        return len(relay.sessions)

    assert relayed() == 4
    hide = "Object.defineProperty(document, 'hidden', {value: %s, configurable: true});" \
           "document.dispatchEvent(new Event('visibilitychange'))"  # fmt: skip
    driver.execute_script(hide % "true")
    wait_for(lambda: relayed() == 0, 10, "the live views stopped while the tab is hidden")
    assert "onglet masqué" in driver.find_element(By.ID, "tile-1").text
    driver.execute_script(hide % "false")
    wait_for(lambda: relayed() == 4, 15, "the live views back when the tab is shown")
    assert playing(driver, "#tile-1")

    # a tile on an offline gateway says so; closing a tile ends its view
    driver.execute_script("window.guetteurLive.play(3, 'ghost', 'c1')")
    wait_js(driver, "document.querySelector('#tile-3').dataset.state === 'refused'", 10,
            "the ghost tile refused")  # fmt: skip
    assert "Passerelle hors ligne" in driver.find_element(By.ID, "tile-3").text
    driver.find_element(By.CSS_SELECTOR, "#tile-2 .tile-close").click()
    wait_for(lambda: relayed() == 2, 10, "the closed tile's view ended")

    # the session ends elsewhere while tiles play: the page says so at the next renewal
    driver.execute_script("fetch('/api/logout', {method: 'POST', credentials: 'same-origin'})")
    wait_js(driver, "!document.querySelector('#login').hidden", 10, "the login form")
    assert driver.find_element(By.ID, "login-message").text.startswith("Votre session")
    wait_for(lambda: relayed() == 0, 15, "the live views of the ended session stopped")

    # -- the auditor: the register names the operator's live views and PTZ session --------------
    login(driver, centre, "aud1")
    assert nav_shown(driver) == ["register"]
    form = driver.find_element(By.ID, "reg-filters")
    form.find_element(By.NAME, "operator").send_keys("op1")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    text = wait_js(
        driver,
        "(t => t.includes('ptz.session.start') && t.includes('cmd.live.start') && t.includes('event.handled') && t.includes('clip.view') && t)(document.querySelector('#reg-rows').textContent)",
        10,
        "the operator's live views, PTZ session, handled event and clip viewing in the register",
    )
    assert "op1" in text
    csv = driver.execute_async_script(
        "fetch(document.querySelector('#reg-csv').href).then(r => r.text()).then(arguments[0])"
    )
    table = list(DictReader(io.StringIO(csv)))
    assert len(table) > 3 and {r["operator"] for r in table} == {"op1"}, table[:2]
    # the page's own stops, not the gateway's dead-man: each is a signed command from the centre
    ptz_rows = centre.login("aud1").ok("GET", "/api/register", action="cmd.ptz")["rows"]
    page_ptz = [
        r["detail"]["action"]
        for r in ptz_rows
        if (r["source"], r["action"]) == ("centre", "cmd.ptz")
    ]
    assert page_ptz == ["move", "stop", "move", "stop", "goto_preset"], page_ptz
    rows = centre.login("aud1").ok("GET", "/api/register", action="event.handled")["rows"]
    assert rows[0]["operator"] == "op1" and rows[0]["detail"]["comment"] == "Patrouille prévenue"
    logout(driver)

    # -- a supervisor: a camera's timeline and the police extraction form -----------------------
    login(driver, centre, "sup1")
    assert nav_shown(driver) == ["fleet", "events", "live", "recordings"]
    open_view(driver, "recordings")
    wait_js(driver, "document.querySelectorAll('#rec-camera option').length === 2", 10,
            "the cameras to pick from")  # fmt: skip
    driver.find_element(By.ID, "rec-show").click()
    wait_js(driver, "document.querySelectorAll('#rec-timeline .bar .ev').length > 0", 10,
            "the events on the camera's timeline")  # fmt: skip
    form = driver.find_element(By.ID, "extraction")
    form.find_element(By.NAME, "requisition").send_keys("PV 2026/1234")
    form.find_element(By.NAME, "officer").send_keys("OPJ Martin")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    answer = wait_js(driver, "document.querySelector('#extraction .ex-status').textContent", 30,
                     "the extraction's answer")  # fmt: skip
    assert answer.startswith("Extraction ext-"), answer
    asked = centre.login("aud1").ok("GET", "/api/register", action="export.request")["rows"]
    assert [(r["operator"], r["camera"], r["detail"]["requisition"]) for r in asked] == [
        ("sup1", "cam1", "PV 2026/1234")
    ]
    # playback of the range from the gateway's recording (supervisors: gateways run exports for
    # that role only); an operator is refused by the API
    driver.find_element(By.ID, "rec-play").click()
    wait_js(driver, "(v => v && v.currentTime > 0.5)(document.querySelector('#rec-video'))", 60,
            "the range cut by the gateway playing in the page")  # fmt: skip
    body = {"gateway": "gw1", "camera": "cam1", "from": "2026-01-01T00:00:00Z",
            "to": "2026-01-01T00:01:00Z"}  # fmt: skip
    assert op.error("POST", "/api/playback", body) == (403, "forbidden")
    exports = centre.login("aud1").ok("GET", "/api/register", action="cmd.export")["rows"]
    asked_by = [
        r["operator"] for r in exports if (r["source"], r["action"]) == ("centre", "cmd.export")
    ]
    assert asked_by == ["sup1", "sup1"]  # the extraction, then the playback
    logout(driver)

    # -- a viewer: no live view, no PTZ pad; the API refuses both anyway ------------------------
    login(driver, centre, "view1")
    assert nav_shown(driver) == ["fleet", "events", "recordings"]
    assert driver.execute_script("return document.querySelector('#ptz').hidden") is True
    assert driver.find_elements(By.ID, "ptz-pad") == []
    viewer = centre.login("view1")
    assert viewer.error("POST", "/api/gateways/gw1/cameras/cam1/ptz", {"action": "stop"}) == (
        403,
        "forbidden",
    )
    assert viewer.error("POST", "/api/live", {"gateway": "gw1", "camera": "cam1"})[0] == 403
    # keyboard: 2 the events, 1 the fleet, L the language
    body = driver.find_element(By.TAG_NAME, "body")
    body.send_keys("2")
    wait_js(driver, "!document.querySelector('#view-events').hidden", 5, "the events by key 2")
    body.send_keys("1")
    wait_js(driver, "!document.querySelector('#view-fleet').hidden", 5, "the fleet by key 1")
    body.send_keys("l")
    wait_js(driver, "document.documentElement.lang === 'en'", 5, "English by key L")
    body.send_keys("l")
    # the language switch: English labels, then back to French (the default)
    driver.execute_script("document.querySelector('header .lang-switch').click()")
    assert driver.find_element(By.CSS_SELECTOR, "#nav button[data-view=fleet]").text == "Fleet"
    driver.execute_script("document.querySelector('header .lang-switch').click()")
    assert driver.find_element(By.CSS_SELECTOR, "#nav button[data-view=fleet]").text == "Parc"


@pytest.mark.slow
def test_black_tiles_say_why_and_a_held_dome_names_its_holder(
    broker: MosquittoBroker,
    centre_server: Callable[..., Centre],
    centre_key: CentreKey,
    dome: tuple[PtyPair, PelcoReader],
    browser: Callable[..., Any],
    media: MediaFactory,
    tmp_path: Path,
) -> None:
    """Bad input from the issue, each a plain sentence in the page: a camera in H.265 (which
    Debian's Chromium cannot play through MSE), a gateway that never answers, two operators
    pressing PTZ on one camera, the limit of live views, and a live stream that stops mid-way
    (the gateway goes away)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from guetteur.runtime.gateway import Gateway

    pty, _pelco = dome
    centre = centre_server(broker, commands={"timeout_s": 1.5}, live={"max_sessions": 1})
    ghost_gateway(broker, "online")
    cameras = [
        {"id": "cam1", "url": WALK, "ptz": {"protocol": "pelco-d", "serial_port": pty.gateway}},
        {"id": "hevc", "url": f"file:{media.hevc_clip()}"},
    ]
    # started here rather than by real_gateway: this test stops it mid-way
    config = gateway_config(tmp_path / "gw", broker.url, cameras=cameras,
                            commands=centre_key.commands_config())  # fmt: skip
    gateway = Gateway(config)
    gateway.start()
    running = True
    try:
        op1 = centre.login("op1")
        wait_for(
            lambda: any(
                g["state"] == "online" and len(g["cameras"]) == 2
                for g in op1.ok("GET", "/api/gateways")["gateways"]
            ),
            20,
            "the gateway and its two cameras in the fleet",
        )
        driver = browser()
        login(driver, centre, "op2")
        open_view(driver, "live")
        Select(driver.find_element(By.ID, "wall-size")).select_by_value("2")
        wait_js(driver, "document.querySelectorAll('#tile-0 .tile-camera option').length > 2",
                10, "the cameras in the tile pickers")  # fmt: skip

        # H.265: the tile says the browser cannot play the codec; the view is given back
        pick = Select(driver.find_element(By.CSS_SELECTOR, "#tile-1 .tile-camera"))
        pick.select_by_value("gw1/hevc")
        wait_js(driver, "document.querySelector('#tile-1').dataset.state === 'unsupported'", 20,
                "the H.265 tile's verdict")  # fmt: skip
        assert "ne sait pas lire le codec hevc" in driver.find_element(By.ID, "tile-1").text
        wait_for(lambda: not live_of(centre, "op2"), 10, "the refused view deleted at the server")

        # a gateway that says it is online and never answers
        driver.execute_script("window.guetteurLive.play(2, 'ghost', 'c1')")
        wait_js(driver, "document.querySelector('#tile-2').dataset.state === 'refused'", 10,
                "the silent gateway's tile")  # fmt: skip
        assert "La passerelle ne répond pas" in driver.find_element(By.ID, "tile-2").text

        # two operators on one dome: op1 holds it (API), op2's pad names op1
        op1.ok("POST", "/api/gateways/gw1/cameras/cam1/ptz", {"action": "move", "pan": 0.5})
        pick = Select(driver.find_element(By.CSS_SELECTOR, "#tile-0 .tile-camera"))
        pick.select_by_value("gw1/cam1")
        assert playing(driver, "#tile-0")
        driver.find_element(By.ID, "tile-0").click()
        left = driver.find_element(
            By.CSS_SELECTOR, "#ptz-pad .ptz-btn[data-pan='-1'][data-tilt='0']"
        )
        ActionChains(driver).click_and_hold(left).pause(0.5).release().perform()
        status = wait_js(
            driver,
            "(s => s.includes('op1') && s)(document.querySelector('.ptz-status').textContent)",
            10,
            "the pad naming the operator who holds the dome",
        )
        assert status.startswith("Caméra tenue par un autre opérateur"), status
        op1.ok("POST", "/api/gateways/gw1/cameras/cam1/ptz", {"action": "stop"})

        # the server's limit of live views (1 here) reached: the tile says so
        driver.execute_script("window.guetteurLive.play(3, 'gw1', 'cam1')")
        wait_js(driver, "document.querySelector('#tile-3').dataset.state === 'refused'", 10,
                "the tile past the limit")  # fmt: skip
        assert "Limite de vues en direct atteinte" in driver.find_element(By.ID, "tile-3").text

        # the stream stops mid-way: the gateway goes away while the tile plays
        gateway.stop()
        running = False
        state = wait_js(
            driver,
            "(s => ['ended', 'stalled'].includes(s) && s)"
            "(document.querySelector('#tile-0').dataset.state)",
            30,
            "the tile saying its stream stopped",
        )
        text = driver.find_element(By.CSS_SELECTOR, "#tile-0 .tile-msg").text
        assert text.startswith("Direct arrêté" if state == "ended" else "Plus d'images"), text
    finally:
        if running:
            gateway.stop()


def live_of(centre: Centre, user: str) -> list[dict[str, Any]]:
    """The live views the server relays for ``user``."""
    server = centre.thread.server
    assert server is not None and server.services.relay is not None
    return [s.describe() for s in server.services.relay.sessions.values() if s.who.username == user]
