// The one way the console talks to the server: same origin, the session cookie (HttpOnly, set
// by POST /api/login), JSON in and out. A 401 anywhere means the session is over: the app shows
// the login form with a sentence saying so (event "guetteur:expired").
import { t } from "./i18n.js";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, "network", t("err.network"));
  }
  let data = null;
  try {
    data = await resp.json();
  } catch {
    throw new ApiError(resp.status, "bad_reply", t("err.bad_reply", { status: resp.status }));
  }
  if (!data.ok) {
    const err = data.error || {};
    if (resp.status === 401 && path !== "/api/login") {
      document.dispatchEvent(new CustomEvent("guetteur:expired", { detail: err.code }));
    }
    throw new ApiError(resp.status, err.code || "error", err.message || resp.statusText);
  }
  return data;
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== "" && v != null) q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}

// Small DOM helper: h("div", {class: "x", onclick: f}, child, "text")
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c != null) el.append(c instanceof Node ? c : String(c));
  return el;
}
