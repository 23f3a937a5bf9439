// Fleet view: every gateway and its cameras, grouped by site, problems first, with a search.
// Refreshed every 5 s while shown (GET /api/gateways); state changes also arrive on the event
// feed, but the fleet's figures (disk, backlog) only come with each gateway's status.
import { api, h } from "./api.js";
import { localTime, t } from "./i18n.js";

const $ = (sel) => document.querySelector(sel);
let timer = null;
let gateways = [];
let lastError = "";

export function problems(gw) {
  const out = [];
  const st = gw.status || {};
  if (gw.state !== "online") out.push(t("fleet.offline_since", { since: localTime(gw.since) }));
  if (st.clock_synced === false) out.push(t("fleet.clock_unsynced"));
  const disk = st.disk || {};
  if (disk.total_bytes && disk.free_bytes / disk.total_bytes < 0.1) out.push(t("fleet.disk_low"));
  const box = st.outbox || {};
  if ((box.items || 0) > 100) out.push(t("fleet.backlog", { n: box.items }));
  for (const c of gw.cameras || [])
    if (c.state && c.state !== "streaming") out.push(t("fleet.camera_state", { camera: c.camera, state: c.state }));
  return out;
}

function gib(bytes) {
  return bytes == null ? "?" : (bytes / 2 ** 30).toFixed(1);
}

function gatewayCard(gw) {
  const st = gw.status || {};
  const disk = st.disk || {};
  const box = st.outbox || {};
  const issues = problems(gw);
  return h(
    "article",
    { class: `gw ${issues.length ? "bad" : "good"}`, dataset: { gateway: gw.gateway } },
    h("h3", {}, h("span", { class: `dot ${gw.state}` }), gw.gateway, " ",
      h("small", { class: "muted" }, t("state." + gw.state) + " — " + t("fleet.since", { since: localTime(gw.since) }))),
    h("p", { class: "figures" },
      t("fleet.disk", { free: gib(disk.free_bytes), total: gib(disk.total_bytes) }), " · ",
      t("fleet.outbox", { n: box.items ?? "?" }), " · ",
      st.clock_synced == null ? t("fleet.clock_unknown") : st.clock_synced ? t("fleet.clock_ok") : t("fleet.clock_unsynced")),
    issues.length ? h("ul", { class: "issues" }, issues.map((p) => h("li", {}, p))) : null,
    h("ul", { class: "cams" },
      (gw.cameras || []).map((c) =>
        h("li", { class: c.state === "streaming" ? "good" : "bad" }, h("span", { class: `dot ${c.state}` }),
          `${c.camera} — ${t("state." + (c.state || "unknown"))}`))),
  );
}

export function render() {
  const needle = $("#fleet-search").value.trim().toLowerCase();
  const onlyBad = $("#fleet-problems").checked;
  const shown = gateways.filter((gw) => {
    if (onlyBad && !problems(gw).length) return false;
    if (!needle) return true;
    const text = [gw.gateway, gw.site, ...(gw.cameras || []).map((c) => c.camera)].join(" ").toLowerCase();
    return text.includes(needle);
  });
  const sites = new Map();
  for (const gw of shown) {
    const site = gw.site || t("fleet.no_site");
    if (!sites.has(site)) sites.set(site, []);
    sites.get(site).push(gw);
  }
  const score = (list) => list.filter((g) => problems(g).length).length;
  const ordered = [...sites.entries()].sort((a, b) => score(b[1]) - score(a[1]) || a[0].localeCompare(b[0]));
  const list = $("#fleet-list");
  list.replaceChildren(
    ...ordered.map(([site, gws]) =>
      h("section", { class: "site" }, h("h2", {}, site),
        h("div", { class: "gws" },
          gws.sort((a, b) => problems(b).length - problems(a).length || a.gateway.localeCompare(b.gateway))
            .map(gatewayCard)))),
  );
  if (lastError) list.prepend(h("p", { class: "message" }, lastError));
  const bad = gateways.filter((g) => problems(g).length).length;
  $("#fleet-summary").textContent = t("fleet.summary", { n: gateways.length, bad });
}

async function refresh() {
  try {
    gateways = (await api("GET", "/api/gateways")).gateways;
    lastError = "";
  } catch (err) {
    lastError = t("fleet.unavailable", { message: err.message });
  }
  render();
}

export async function cameras() {
  // every camera of the fleet (for the live and recordings pickers)
  const gws = (await api("GET", "/api/gateways")).gateways;
  return gws.flatMap((gw) => (gw.cameras || []).map((c) => ({ gateway: gw.gateway, camera: c.camera, state: c.state, online: gw.state === "online" })));
}

export function show() {
  $("#fleet-search").oninput = render;
  $("#fleet-problems").onchange = render;
  refresh();
  timer = setInterval(refresh, 5000);
}

export function hide() {
  clearInterval(timer);
  timer = null;
}

export const relabel = render;

export function key(ev) {
  if (ev.key === "/") {
    $("#fleet-search").focus();
    ev.preventDefault();
  }
}
