// Recordings: a camera and a time range, a timeline of the clips stored at the centre and of
// the events, a clip played in the page; for supervisors, the police extraction form (the
// gateway cuts the exact recorded bytes; the server signs the manifest) and the extractions.
import { api, h, query } from "./api.js";
import { cameras } from "./fleet.js";
import { inputToIso, localTime, t } from "./i18n.js";

const $ = (sel) => document.querySelector(sel);
let ctx = null;

function localInput(date) {
  const off = date.getTimezoneOffset() * 60000;
  return new Date(date.getTime() - off).toISOString().slice(0, 19);
}

function range() {
  return { since: inputToIso($("#rec-since").value), until: inputToIso($("#rec-until").value) };
}

function play(url, note) {
  const status = h("p", { class: "muted", id: "rec-status" }, note || "");
  const video = h("video", { id: "rec-video", src: url, controls: true, autoplay: true, muted: true });
  video.addEventListener("loadeddata", () => (status.textContent = ""));
  video.addEventListener("error", () => (status.textContent = t("rec.play_failed")));
  $("#rec-player").replaceChildren(status, video);
}

// Supervisors: the range played from the gateway's recording (an export the gateway cuts, the
// recorded bytes remuxed); the clip's URL waits for it to arrive (?wait=).
async function playRange() {
  const [gateway, camera] = ($("#rec-camera").value || "/").split("/");
  const { since, until } = range();
  $("#rec-player").replaceChildren(h("p", { class: "muted", id: "rec-status" }, t("rec.asking")));
  try {
    const r = await api("POST", "/api/playback", { gateway, camera, from: since, to: until });
    play(`${r.url}?wait=60`, t("rec.cutting", { from: localTime(r.from), to: localTime(r.to) }));
  } catch (err) {
    $("#rec-player").replaceChildren(h("p", { class: "message", id: "rec-status" }, t("rec.play_refused", { message: err.message })));
  }
}

async function showTimeline() {
  const [gateway, camera] = ($("#rec-camera").value || "/").split("/");
  const { since, until } = range();
  const box = $("#rec-timeline");
  if (!camera || !since || !until || since >= until) {
    box.replaceChildren(h("p", { class: "message" }, t("rec.pick")));
    return;
  }
  box.replaceChildren(h("p", { class: "muted" }, t("common.loading")));
  let data;
  try {
    data = await api("GET", `/api/cameras/${gateway}/${camera}/timeline` + query({ since, until }));
  } catch (err) {
    box.replaceChildren(h("p", { class: "message" }, err.message));
    return;
  }
  const t0 = Date.parse(since), span = Date.parse(until) - t0;
  const pos = (iso) => `${Math.max(0, Math.min(100, ((Date.parse(iso) - t0) / span) * 100))}%`;
  const width = (a, b) => `${Math.max(0.4, ((Date.parse(b || a) - Date.parse(a)) / span) * 100)}%`;
  const bar = h("div", { class: "bar" },
    data.clips.map((c) => h("button", { class: "clip", style: `left:${pos(c.started)};width:${width(c.started, c.ended)}`,
      title: `${localTime(c.started)} → ${localTime(c.ended)}`, onclick: () => (ctx.can("clips.read") ? play(c.url) : null) })),
    data.events.map((e) => h("span", { class: "ev", style: `left:${pos(e.started)}`, title: `${localTime(e.started)} ${(e.labels || "")}` })));
  box.replaceChildren(
    h("div", { class: "scale" }, h("span", {}, localTime(since)), h("span", {}, localTime(until))), bar,
    h("p", { class: "muted" }, t("rec.summary", { clips: data.clips.length, events: data.events.length })),
    data.recordings == null ? h("p", { class: "muted small" }, t("rec.ring_unknown")) : null);
}

function extractionForm() {
  const form = $("#extraction");
  form.replaceChildren(
    h("h3", {}, t("rec.extraction")),
    h("p", { class: "muted small" }, t("rec.extraction_hint")),
    h("label", {}, t("rec.requisition"), " ", h("input", { name: "requisition", required: true, maxlength: "200" })),
    h("label", {}, t("rec.officer"), " ", h("input", { name: "officer", required: true, maxlength: "200" })),
    h("button", { type: "submit" }, t("rec.extract")),
    h("p", { class: "ex-status", role: "status" }));
  form.onsubmit = async (ev) => {
    ev.preventDefault();
    const [gateway, camera] = ($("#rec-camera").value || "/").split("/");
    const { since, until } = range();
    const out = form.querySelector(".ex-status");
    try {
      const r = await api("POST", "/api/exports", { gateway, camera, from: since, to: until,
        requisition: form.requisition.value, officer: form.officer.value });
      out.textContent = t("rec.extraction_sent", { id: r.extraction.id, state: r.extraction.state });
      listExtractions();
    } catch (err) {
      out.textContent = err.message;
    }
  };
}

async function listExtractions() {
  const box = $("#extractions");
  try {
    const { extractions } = await api("GET", "/api/exports");
    box.replaceChildren(h("h3", {}, t("rec.extractions")), h("ul", {}, extractions.map((x) =>
      h("li", {}, `${x.id} — ${x.camera} — ${x.state || ""} — ${x.requisition || ""} `,
        (x.files || []).map((f) => h("a", { href: f, download: "" }, f.split("/").pop() + " "))))));
  } catch (err) {
    box.replaceChildren(h("p", { class: "message" }, err.message));
  }
}

export async function show(context) {
  ctx = context;
  const now = new Date();
  // the last ten minutes up to now (an extraction may not reach into the future)
  if (!$("#rec-since").value) $("#rec-since").value = localInput(new Date(now - 600e3));
  if (!$("#rec-until").value) $("#rec-until").value = localInput(now);
  $("#rec-show").onclick = showTimeline;
  if (ctx.can("export") && !$("#rec-play")) {
    $("#rec-show").after(h("button", { id: "rec-play", onclick: playRange }, t("rec.play_range")));
  }
  try {
    const list = await cameras();
    $("#rec-camera").replaceChildren(...list.map((c) => h("option", { value: `${c.gateway}/${c.camera}` }, `${c.camera} (${c.gateway})`)));
  } catch (err) {
    $("#rec-timeline").replaceChildren(h("p", { class: "message" }, err.message));
  }
  if (ctx.can("export")) {
    extractionForm();
    listExtractions();
  }
}

export function hide() {
  $("#rec-player video")?.pause();
}
