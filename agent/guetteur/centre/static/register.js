// Register view (auditors): the access register with filters, its CSV export, the signed report
// and the chain's verification.
import { api, h, query } from "./api.js";
import { inputToIso, localTime, t } from "./i18n.js";

const $ = (sel) => document.querySelector(sel);

function params() {
  const f = $("#reg-filters");
  const out = {};
  for (const name of ["operator", "camera", "gateway", "action"]) out[name] = f[name].value.trim();
  out.since = inputToIso(f.since.value);
  out.until = inputToIso(f.until.value);
  return out;
}

function row(r) {
  const related = (r.related || []).map((x) => `${x.source}: ${x.action} ${x.outcome || ""}`).join("; ");
  return h("tr", { class: r.outcome && r.outcome !== "ok" ? "bad" : "" },
    h("td", {}, r.seq), h("td", {}, localTime(r.time)), h("td", {}, r.operator || "—"),
    h("td", { title: related }, r.action), h("td", {}, r.gateway || ""), h("td", {}, r.camera || ""),
    h("td", {}, r.outcome || ""), h("td", {}, r.source));
}

async function load(ev) {
  ev?.preventDefault();
  const q = query(params());
  $("#reg-csv").href = "/api/register.csv" + q;
  $("#reg-report").href = "/api/register/report" + q;
  $("#reg-status").textContent = t("common.loading");
  try {
    const { rows } = await api("GET", "/api/register" + q);
    $("#reg-rows").replaceChildren(...rows.map(row));
    $("#reg-status").textContent = t("reg.count", { n: rows.length });
  } catch (err) {
    $("#reg-status").textContent = err.message;
  }
}

async function verify() {
  $("#reg-status").textContent = t("common.loading");
  try {
    const r = await api("GET", "/api/register/verify");
    $("#reg-status").textContent = r.verified ? t("reg.verified") : t("reg.broken", { problems: (r.problems || []).join("; ") });
  } catch (err) {
    $("#reg-status").textContent = err.message;
  }
}

export function show() {
  $("#reg-filters").onsubmit = load;
  $("#reg-verify").onclick = verify;
  load();
}

export function hide() {}
