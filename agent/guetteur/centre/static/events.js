// Event feed: the newest events (GET /api/events with the filters), then every new one as the
// server pushes it (server-sent events, /api/events/stream: within a second of being stored).
// One card per event (its start/update/end messages merged), its snapshot as a thumbnail; a
// click opens the event: snapshot, clip played in the page, "mark as handled" with a comment.
import { api, h, query } from "./api.js";
import { inputToIso, localTime, t } from "./i18n.js";

const $ = (sel) => document.querySelector(sel);
const cards = new Map(); // "gw/event_id" → {event, snapshot, el}
let source = null;
let ctx = null;
let selected = null;

function keyOf(gw, eventId) {
  return `${gw}/${eventId}`;
}

function filters() {
  return {
    camera: $("#ev-camera").value.trim(),
    label: $("#ev-label").value.trim(),
    since: inputToIso($("#ev-since").value),
    until: inputToIso($("#ev-until").value),
  };
}

function matches(ev) {
  const f = filters();
  if (f.camera && ev.camera !== f.camera) return false;
  if (f.label && !(ev.labels || []).some((l) => String(l.label ?? l).includes(f.label))) return false;
  if (f.since && ev.start && ev.start < f.since) return false;
  if (f.until && ev.start && ev.start >= f.until) return false;
  return true;
}

function labelText(labels) {
  return (labels || []).map((l) => (typeof l === "string" ? l : l.label)).filter(Boolean).join(", ");
}

function card(entry) {
  const ev = entry.event;
  const el = h(
    "li",
    { class: "event", tabindex: "0", dataset: { key: keyOf(ev.gateway, ev.event_id) },
      onclick: () => open(entry), onkeydown: (e) => e.key === "Enter" && open(entry) },
    entry.snapshot
      ? h("img", { class: "thumb", src: entry.snapshot, alt: t("events.snapshot"), loading: "lazy" })
      : h("div", { class: "thumb none" }, t("events.no_snapshot")),
    h("div", {},
      h("strong", {}, `${ev.camera}`), h("span", { class: "muted" }, ` — ${ev.gateway}`),
      h("div", {}, localTime(ev.start)),
      h("div", {}, t("events.labels_score", { labels: labelText(ev.labels) || t("events.no_labels"), score: ev.score == null ? "—" : Number(ev.score).toFixed(2) })),
      h("div", { class: "muted" }, t("events.type." + (ev.end ? "end" : ev.type)) + (entry.handled ? ` · ${t("events.handled_by", { who: entry.handled })}` : ""))),
  );
  el.classList.toggle("handled", !!entry.handled);
  el.classList.toggle("on", selected === entry);
  return el;
}

function upsert(ev, atTop) {
  const k = keyOf(ev.gateway, ev.event_id || ev.id);
  let entry = cards.get(k);
  if (!entry) {
    entry = { event: { ...ev, event_id: ev.event_id || ev.id }, snapshot: null, handled: null, el: null };
    cards.set(k, entry);
  } else {
    const merged = { ...entry.event };
    for (const [name, value] of Object.entries(ev)) if (value != null && !(Array.isArray(value) && !value.length)) merged[name] = value;
    merged.start = entry.event.start || ev.start;
    entry.event = merged;
  }
  draw(entry, atTop);
  return entry;
}

function draw(entry, atTop) {
  const fresh = card(entry);
  if (entry.el && entry.el.isConnected) entry.el.replaceWith(fresh);
  else if (atTop) $("#ev-list").prepend(fresh);
  else $("#ev-list").append(fresh);
  entry.el = fresh;
}

async function reload() {
  $("#ev-list").replaceChildren();
  cards.clear();
  try {
    const f = filters();
    const { events } = await api("GET", "/api/events" + query({ ...f, limit: 200 }));
    for (const ev of events) if (!cards.has(keyOf(ev.gateway, ev.event_id))) upsert(ev, false);
    // thumbnails of what was already there: the event's own snapshots (first 30)
    for (const entry of [...cards.values()].slice(0, 30)) {
      api("GET", `/api/events/${entry.event.gateway}/${encodeURIComponent(entry.event.event_id)}`)
        .then((d) => {
          if (d.snapshots.length) {
            entry.snapshot = d.snapshots[d.snapshots.length - 1].url;
            draw(entry);
          }
        })
        .catch(() => {});
    }
  } catch (err) {
    $("#ev-list").append(h("li", { class: "message" }, t("events.unavailable", { message: err.message })));
  }
}

function listen() {
  source?.close();
  source = new EventSource("/api/events/stream");
  source.onopen = () => ($("#ev-feed-state").textContent = t("events.feed_live"));
  source.onerror = () => {
    // EventSource retries by itself (with Last-Event-ID); a refused session closes it for good
    $("#ev-feed-state").textContent = source.readyState === EventSource.CLOSED ? t("events.feed_closed") : t("events.feed_retry");
    if (source.readyState === EventSource.CLOSED) api("GET", "/api/me").catch(() => {});
  };
  source.addEventListener("event", (msg) => {
    const ev = JSON.parse(msg.data);
    if (matches(ev)) upsert(ev, true);
  });
  source.addEventListener("snapshot", (msg) => {
    const snap = JSON.parse(msg.data);
    const entry = snap.event_id && cards.get(keyOf(snap.gateway, snap.event_id));
    if (entry) {
      entry.snapshot = snap.url;
      draw(entry);
      // the open event gets the new picture in place: a comment being typed is kept
      if (selected === entry) {
        const still = $("#ev-detail .still");
        if (still) still.src = snap.url;
        else $("#ev-detail h2")?.after(h("img", { class: "still", src: snap.url, alt: t("events.snapshot") }));
      }
    }
  });
}

async function open(entry) {
  selected = entry;
  for (const el of document.querySelectorAll("#ev-list .event")) el.classList.toggle("on", el === entry.el);
  const ev = entry.event;
  const pane = $("#ev-detail");
  pane.replaceChildren(h("p", { class: "muted" }, t("common.loading")));
  let d;
  try {
    d = await api("GET", `/api/events/${ev.gateway}/${encodeURIComponent(ev.event_id)}`);
  } catch (err) {
    pane.replaceChildren(h("p", { class: "message" }, err.message));
    return;
  }
  if (selected !== entry) return;
  const parts = [h("h2", {}, `${ev.camera} — ${localTime(ev.start)}`),
    h("p", {}, t("events.labels_score", { labels: labelText(ev.labels) || t("events.no_labels"), score: ev.score == null ? "—" : Number(ev.score).toFixed(2) }))];
  if (d.clip && d.clip.url && ctx.can("clips.read")) {
    parts.push(h("video", { id: "ev-clip", src: d.clip.url, controls: true, autoplay: true, muted: true, playsinline: true }));
  } else if (ctx.can("clips.read")) {
    parts.push(h("p", { class: "message" }, d.clip ? t("events.clip_arriving") : t("events.no_clip")));
  }
  const snap = d.snapshots[d.snapshots.length - 1];
  if (snap) parts.push(h("img", { class: "still", src: snap.url, alt: t("events.snapshot") }));
  if (d.handled && d.handled.length) {
    const last = d.handled[d.handled.length - 1];
    entry.handled = last.operator;
    draw(entry);
    parts.push(h("ul", { class: "handled-list" }, d.handled.map((x) =>
      h("li", {}, t("events.handled_at", { who: x.operator, time: localTime(x.time), comment: x.comment || "—" })))));
  }
  if (ctx.can("events.handle")) {
    const comment = h("textarea", { id: "ev-comment", rows: "3", maxlength: "2000", placeholder: t("events.comment") });
    const status = h("p", { class: "muted", id: "ev-handled-status" }, entry.handled ? t("events.handled_by", { who: entry.handled }) : "");
    const button = h("button", { id: "ev-handle", onclick: async () => {
      button.disabled = true;
      try {
        await api("POST", `/api/events/${ev.gateway}/${encodeURIComponent(ev.event_id)}/handled`, { comment: comment.value });
        entry.handled = ctx.me.username;
        status.textContent = t("events.handled_by", { who: entry.handled });
        draw(entry);
      } catch (err) {
        status.textContent = err.message;
      } finally {
        button.disabled = false;
      }
    } }, t("events.mark_handled"));
    parts.push(h("div", { class: "handle" }, comment, button, status));
  }
  pane.replaceChildren(...parts);
}

export function show(context) {
  ctx = context;
  $("#ev-apply").onclick = reload;
  reload();
  listen();
}

export function hide() {
  source?.close();
  source = null;
  $("#ev-detail video")?.pause();
}

export function relabel() {
  for (const entry of cards.values()) draw(entry);
}

export function key(ev) {
  if (ev.key === "Escape") {
    selected = null;
    $("#ev-detail").replaceChildren();
  } else if (ev.key === "j" || ev.key === "k") {
    const list = [...document.querySelectorAll("#ev-list .event")];
    const at = list.findIndex((el) => el.classList.contains("on"));
    const next = list[Math.max(0, Math.min(list.length - 1, at + (ev.key === "j" ? 1 : -1)))];
    next?.click();
    next?.focus();
  }
}
