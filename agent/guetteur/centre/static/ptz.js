// PTZ pad: pan/tilt arrows and zoom buttons send a move while pressed (renewed every third of
// the gateway's dead-man delay) and a stop on release, on losing focus, when the tab is hidden
// and when a request fails; the gateway's dead-man stop is the last resort, not the first.
// Presets, and who holds the camera for how long (the gateway's arbiter, through the reply).
import { api, h } from "./api.js";
import { t } from "./i18n.js";

const DIRS = [
  ["↖", -1, 1], ["↑", 0, 1], ["↗", 1, 1],
  ["←", -1, 0], null, ["→", 1, 0],
  ["↙", -1, -1], ["↓", 0, -1], ["↘", 1, -1],
];
const KEYS = { ArrowUp: [0, 1, 0], ArrowDown: [0, -1, 0], ArrowLeft: [-1, 0, 0], ArrowRight: [1, 0, 0], "+": [0, 0, 1], "-": [0, 0, -1] };
const SPEED = 0.5;

let target = null;
let panel = null;
let moving = null; // {timer, velocity}
let deadManS = 1.0;
let holdTimer = null;

async function send(body) {
  const path = `/api/gateways/${target.gateway}/cameras/${target.camera}/ptz`;
  return api("POST", path, body);
}

function status(text, cls = "") {
  const el = panel?.querySelector(".ptz-status");
  if (el) {
    el.textContent = text;
    el.className = `ptz-status ${cls}`;
  }
}

function holder(reply) {
  clearInterval(holdTimer);
  const until = Date.now() + (reply.held_for_s || 0) * 1000;
  const draw = () => {
    const left = Math.max(0, Math.round((until - Date.now()) / 1000));
    status(t("ptz.held", { who: reply.operator || "?", priority: reply.priority ?? "?", s: left }), "ok");
    if (!left) clearInterval(holdTimer);
  };
  draw();
  holdTimer = setInterval(draw, 1000);
}

function refused(err) {
  const key = { locked: "ptz.locked", not_supported: "ptz.not_ptz", gateway_offline: "live.gateway_offline", timeout: "live.no_answer", network: "ptz.network" }[err.code];
  status(key ? t(key, { message: err.message }) : t("ptz.refused", { message: err.message }), "bad");
}

export async function press(pan, tilt, zoom) {
  if (!target) return;
  release();
  const velocity = { pan: pan * SPEED, tilt: tilt * SPEED, zoom: zoom * SPEED };
  const body = { action: "move", ...velocity };
  const state = { velocity, timer: null, failed: false };
  moving = state;
  const once = async () => {
    try {
      const reply = await send(body);
      if (moving !== state) return; // released while the move was in flight: its stop follows
      deadManS = reply.dead_man_s || deadManS;
      holder(reply);
    } catch (err) {
      state.failed = true;
      if (moving === state) release(); // a dropped connection: try to stop now
      refused(err);
    }
  };
  const tick = () => (state.inflight = once());
  await tick();
  if (moving === state) state.timer = setInterval(tick, Math.max(150, (deadManS * 1000) / 3));
}

export function release() {
  const state = moving;
  if (!state) return;
  moving = null;
  clearInterval(state.timer);
  if (!target) return;
  const path = `/api/gateways/${target.gateway}/cameras/${target.camera}/ptz`;
  // after the move in flight (a stop overtaking it would leave the dome moving until the
  // dead-man stop); keepalive: the stop still leaves when the page is being closed or hidden
  Promise.resolve(state.inflight).then(() => fetch(path, { method: "POST", credentials: "same-origin", keepalive: true,
    headers: { "Content-Type": "application/json" }, body: JSON.stringify({ action: "stop" }) }))
    .then(async (resp) => {
      const data = await resp.json();
      if (data.ok) holder(data);
      else if (!state.failed) refused({ code: data.error?.code, message: data.error?.message });
    })
    .catch(() => status(t("ptz.stop_lost", { s: deadManS }), "bad"));
}

function padButton(label, pan, tilt, zoom, cls) {
  const b = h("button", { class: `ptz-btn ${cls || ""}`, type: "button", dataset: { pan, tilt, zoom } }, label);
  b.addEventListener("pointerdown", (e) => {
    e.preventDefault();
    press(pan, tilt, zoom);
    try {
      b.setPointerCapture(e.pointerId); // the release reaches us even off the button
    } catch {
      // a pointer the browser no longer tracks: pointerup/blur still stop the move
    }
  });
  for (const ev of ["pointerup", "pointercancel", "lostpointercapture"]) b.addEventListener(ev, release);
  b.addEventListener("contextmenu", (e) => e.preventDefault());
  return b;
}

export function mount(el, tgt, ctx) {
  release();
  clearInterval(holdTimer);
  panel = el;
  target = tgt;
  if (!ctx.can("ptz")) {
    el.hidden = true;
    el.replaceChildren();
    return;
  }
  el.hidden = false;
  if (!tgt) {
    el.replaceChildren(h("h3", {}, t("ptz.title")), h("p", { class: "muted" }, t("ptz.pick")));
    return;
  }
  const preset = h("input", { type: "number", min: "1", max: "255", value: "1", class: "ptz-preset" });
  const presetCall = (action) => async () => {
    try {
      holder(await send({ action, preset: Number(preset.value) }));
    } catch (err) {
      refused(err);
    }
  };
  el.replaceChildren(
    h("h3", {}, t("ptz.title"), " — ", tgt.camera),
    h("div", { class: "pad", id: "ptz-pad" }, DIRS.map((d) => (d ? padButton(d[0], d[1], d[2], 0, "dir") :
      h("button", { class: "ptz-btn home", type: "button", title: t("ptz.home"), onclick: presetCall("home") }, "⌂")))),
    h("div", { class: "zoom" }, padButton(t("ptz.zoom_in"), 0, 0, 1, "zoom-in"), padButton(t("ptz.zoom_out"), 0, 0, -1, "zoom-out")),
    h("div", { class: "presets" }, h("label", {}, t("ptz.preset"), " ", preset),
      h("button", { type: "button", onclick: presetCall("goto_preset") }, t("ptz.goto")),
      h("button", { type: "button", onclick: presetCall("set_preset") }, t("ptz.set"))),
    h("p", { class: "ptz-status muted", role: "status" }, t("ptz.free")),
    h("p", { class: "muted small" }, t("ptz.keys")),
  );
}

export function key(ev) {
  const v = KEYS[ev.key];
  if (!v || !target || !panel || panel.hidden) return;
  ev.preventDefault();
  if (ev.repeat) return;
  press(...v);
  const up = (e) => {
    if (e.key === ev.key) {
      document.removeEventListener("keyup", up);
      release();
    }
  };
  document.addEventListener("keyup", up);
}

// Losing focus or the connection stops the dome at once.
window.addEventListener("blur", release);
window.addEventListener("offline", release);
window.addEventListener("pagehide", release);
