// Live view: one camera or a wall of 2x2, 3x3, 4x4 tiles. Each tile asks the server for a live
// view (POST /api/live), receives the gateway's fMP4 over the server's WebSocket relay and
// plays it with Media Source Extensions. The lease is renewed while the tab is visible; the view
// is deleted when the tile closes or the tab is hidden. A tile never stays black without a
// sentence saying why (offline gateway, stalled camera, limit reached, codec, session...).
import { api, ApiError, h } from "./api.js";
import { cameras } from "./fleet.js";
import { t } from "./i18n.js";
import { codecString, Feeder } from "./mse.js";
import * as ptz from "./ptz.js";

const $ = (sel) => document.querySelector(sel);
const FIRST_FRAME_S = 15; // no picture by then: say so rather than spin
const STALL_S = 5;
let tiles = [];
let ctx = null;
let choices = [];
let current = null; // the selected tile (PTZ pad target)

// Why a live view could not start, as a sentence (the server's code → our label).
export function reason(err) {
  const keys = {
    gateway_offline: "live.gateway_offline",
    unknown_gateway: "live.unknown_gateway",
    limit_reached: "live.limit",
    busy: "live.limit",
    too_many: "live.limit",
    timeout: "live.no_answer",
    session_expired: "live.session_expired",
    unauthenticated: "live.session_expired",
    forbidden: "live.forbidden",
    network: "live.network",
    unknown_camera: "live.unknown_camera",
    camera_unavailable: "live.camera_stalled",
    not_streaming: "live.camera_stalled",
  };
  if (err instanceof ApiError && keys[err.code]) return t(keys[err.code], { message: err.message });
  if (err instanceof ApiError && err.status === 429) return t("live.limit");
  return t("live.refused", { message: err.message || String(err) });
}

// An fMP4 init segment starts with its ftyp box.
function isInit(buffer) {
  const b = new Uint8Array(buffer, 0, Math.min(8, buffer.byteLength));
  return b.length === 8 && String.fromCharCode(b[4], b[5], b[6], b[7]) === "ftyp";
}

class Tile {
  constructor(index) {
    this.index = index;
    this.target = null; // {gateway, camera}
    this.stream = "main";
    this.session = null;
    this.generation = 0; // a stale WebSocket or reply is ignored after a restart/stop
    this.pausedByTab = false;
    this.bytes = 0; // received, for the bench
    this.video = h("video", { muted: true, autoplay: true, playsinline: true });
    this.video.muted = true;
    this.msg = h("p", { class: "tile-msg", role: "status" });
    this.picker = h("select", { class: "tile-camera", onchange: () => this.choose(this.picker.value) });
    this.streamPicker = h("select", { class: "tile-stream", onchange: () => {
      this.stream = this.streamPicker.value;
      if (this.target) this.start();
    } }, h("option", { value: "main" }, t("live.main")), h("option", { value: "sub" }, t("live.sub")));
    this.close = h("button", { class: "tile-close", title: t("live.close"), onclick: (e) => {
      e.stopPropagation();
      this.choose("");
    } }, "×");
    this.el = h("div", { class: "tile", id: `tile-${index}`, tabindex: "0", onclick: () => selectTile(this) },
      h("div", { class: "tile-bar" }, this.picker, this.streamPicker, this.close), this.video, this.msg);
    this.fillPicker();
    this.say(t("live.pick"), "idle");
  }

  fillPicker() {
    const value = this.target ? `${this.target.gateway}/${this.target.camera}` : "";
    this.picker.replaceChildren(h("option", { value: "" }, t("live.no_camera")),
      ...choices.map((c) => h("option", { value: `${c.gateway}/${c.camera}` }, `${c.camera} (${c.gateway})${c.online ? "" : " — " + t("state.offline")}`)));
    if (value && !choices.some((c) => `${c.gateway}/${c.camera}` === value))
      this.picker.append(h("option", { value }, value));
    this.picker.value = value;
  }

  say(text, state) {
    this.msg.textContent = text;
    this.msg.hidden = !text;
    this.el.dataset.state = state;
  }

  choose(value) {
    this.stop("");
    if (!value) {
      this.target = null;
      this.picker.value = "";
      this.say(t("live.pick"), "idle");
      if (current === this) ptz.mount($("#ptz"), null, ctx);
      return;
    }
    const [gateway, camera] = value.split("/");
    this.target = { gateway, camera };
    this.picker.value = value;
    this.start();
    selectTile(this);
  }

  async start() {
    this.stop("");
    const gen = ++this.generation;
    const { gateway, camera } = this.target;
    this.say(t("live.connecting", { camera }), "starting");
    this.startedAt = performance.now();
    let view;
    try {
      view = await api("POST", "/api/live", { gateway, camera, stream: this.stream });
    } catch (err) {
      if (gen === this.generation) this.say(reason(err), "refused");
      return;
    }
    if (gen !== this.generation) {
      api("DELETE", `/api/live/${view.session}`).catch(() => {});
      return;
    }
    this.session = view;
    this.el.dataset.session = view.session;
    const every = Math.max(1, view.lease_s / 3) * 1000;
    this.renewTimer = setInterval(() => this.renew(gen), every);
    this.lastData = performance.now();
    this.watchdog = setInterval(() => this.check(gen), 1000);
    this.open(view, gen);
  }

  open(view, gen) {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${proto}//${location.host}${view.ws}`);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.feeder = null;
    let early = [];
    ws.onmessage = (msg) => {
      if (gen !== this.generation) return;
      if (typeof msg.data === "string") {
        const info = JSON.parse(msg.data);
        if (info.type === "end") this.stop(t("live.ended", { reason: info.reason || "?" }), "ended", false);
        return;
      }
      this.lastData = performance.now();
      this.bytes += msg.data.byteLength;
      if (this.ms && isInit(msg.data)) {
        // the gateway restarted the stream (its queue overflowed, new parameters): a new init
        // segment whose timestamps start again; a fresh MediaSource plays it from there
        this.ms = null;
        this.feeder = null;
        early = [];
        this.restarts = (this.restarts || 0) + 1;
      }
      if (!this.ms) {
        const codec = codecString(msg.data) || (view.codec === "hevc" ? "hvc1.1.6.L93.B0" : "avc1.640028");
        const mime = `video/mp4; codecs="${codec}"`;
        if (!window.MediaSource || !MediaSource.isTypeSupported(mime)) {
          this.stop(t("live.codec", { codec: view.codec || codec }), "unsupported");
          return;
        }
        this.ms = new MediaSource();
        early.push(msg.data);
        this.ms.addEventListener("sourceopen", () => {
          if (gen !== this.generation) return;
          const sb = this.ms.addSourceBuffer(mime);
          this.feeder = new Feeder(sb, this.video, (why) => this.stop(t("live.decode_error", { why }), "error"));
          for (const b of early) this.feeder.push(b);
          early = [];
        }, { once: true });
        if (this.url) URL.revokeObjectURL(this.url);
        this.url = URL.createObjectURL(this.ms);
        this.video.src = this.url;
        return;
      }
      if (this.feeder) this.feeder.push(msg.data);
      else early.push(msg.data);
    };
    ws.onclose = () => {
      if (gen === this.generation && this.session) this.stop(t("live.connection_lost"), "ended");
    };
  }

  check(gen) {
    if (gen !== this.generation) return;
    const quiet = (performance.now() - this.lastData) / 1000;
    const playing = this.video.currentTime > 0 && this.video.readyState >= 2;
    if (playing) {
      this.feeder?.keepLive();
      if (quiet > STALL_S) this.say(t("live.stalled", { s: Math.round(quiet) }), "stalled");
      else if (this.el.dataset.state !== "playing") this.say("", "playing");
    } else if ((performance.now() - this.startedAt) / 1000 > FIRST_FRAME_S) {
      this.say(quiet > STALL_S ? t("live.no_video", { s: FIRST_FRAME_S }) : t("live.no_picture"), "stalled");
    } else {
      this.feeder?.keepLive();
    }
  }

  async renew(gen) {
    if (gen !== this.generation || !this.session) return;
    try {
      await api("POST", `/api/live/${this.session.session}/renew`);
    } catch (err) {
      if (gen !== this.generation) return;
      if (err.code === "network") this.say(t("live.network"), "stalled");
      else this.stop(err.code === "unknown_session" ? t("live.ended", { reason: err.message }) : reason(err), "ended", false);
    }
  }

  // Stop the view: the server's session deleted unless it is already over (tell=false).
  stop(text, state = "stopped", tell = true) {
    this.generation++;
    clearInterval(this.renewTimer);
    clearInterval(this.watchdog);
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.close();
      this.ws = null;
    }
    if (this.session && tell)
      fetch(`/api/live/${this.session.session}`, { method: "DELETE", credentials: "same-origin", keepalive: true }).catch(() => {});
    this.session = null;
    delete this.el.dataset.session;
    this.feeder = null;
    if (this.ms) {
      this.video.removeAttribute("src");
      this.video.load();
      this.ms = null;
    }
    if (text) this.say(text, state);
  }
}

function selectTile(tile) {
  current = tile;
  for (const t2 of tiles) t2.el.classList.toggle("on", t2 === tile);
  if (ctx.can("ptz")) ptz.mount($("#ptz"), tile.target, ctx);
}

function layout(n) {
  const count = n * n;
  while (tiles.length > count) tiles.pop().stop("");
  while (tiles.length < count) tiles.push(new Tile(tiles.length));
  const wall = $("#wall");
  wall.style.setProperty("--n", n);
  wall.replaceChildren(...tiles.map((x) => x.el));
  localStorage.setItem("guetteur.wall", String(n));
}

function onVisibility() {
  if (document.hidden) {
    for (const tile of tiles) if (tile.session || tile.el.dataset.state === "starting") {
      tile.stop(t("live.paused_hidden"), "paused");
      tile.pausedByTab = true;
    }
    ptz.release();
  } else {
    for (const tile of tiles) if (tile.pausedByTab && tile.target) {
      tile.pausedByTab = false;
      tile.start();
    }
  }
}

// Tests and the bench drive tiles through this (the same path as the pickers).
export function play(index, gateway, camera, stream = "main") {
  const tile = tiles[index];
  tile.stream = stream;
  tile.streamPicker.value = stream;
  tile.choose(`${gateway}/${camera}`);
}

export function wall(n) {
  $("#wall-size").value = String(n);
  layout(n);
}

export async function show(context) {
  ctx = context;
  const n = Number(localStorage.getItem("guetteur.wall") || "1");
  $("#wall-size").value = String(n);
  $("#wall-size").onchange = () => layout(Number($("#wall-size").value));
  layout(n);
  document.addEventListener("visibilitychange", onVisibility);
  if (ctx.can("ptz")) ptz.mount($("#ptz"), current?.target ?? null, ctx);
  try {
    choices = await cameras();
  } catch (err) {
    choices = [];
    for (const tile of tiles) if (!tile.target) tile.say(t("fleet.unavailable", { message: err.message }), "idle");
  }
  for (const tile of tiles) tile.fillPicker();
  window.guetteurLive = { play, wall, tiles: () => tiles };
}

export function hide() {
  document.removeEventListener("visibilitychange", onVisibility);
  for (const tile of tiles) tile.stop("");
  tiles = [];
  current = null;
  ptz.release();
}

export function relabel() {
  for (const tile of tiles) {
    tile.fillPicker();
    if (!tile.target) tile.say(t("live.pick"), "idle");
  }
}

export function key(ev) {
  if (["1", "2", "3", "4"].includes(ev.key)) return;
  if (ev.key === "w") {
    const sizes = [1, 2, 3, 4];
    wall(sizes[(sizes.indexOf(Number($("#wall-size").value)) + 1) % sizes.length]);
  } else if (ev.key === "Escape" && current) {
    current.choose("");
  } else {
    ptz.key(ev);
  }
}
