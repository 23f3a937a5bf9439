// The console's entry point: login, the caller's permissions (GET /api/me) deciding what is
// shown, the views, logout, session expiry, keyboard shortcuts. Each view is its own module
// with show()/hide(); the server refuses anyway what a role may not do.
import { api, ApiError } from "./api.js";
import { applyLabels, loadLabels, switchLang, t } from "./i18n.js";
import * as fleet from "./fleet.js";
import * as events from "./events.js";
import * as live from "./live.js";
import * as recordings from "./recordings.js";
import * as register from "./register.js";

const VIEWS = { fleet, events, live, recordings, register };
const state = { me: null, view: null };
const $ = (sel) => document.querySelector(sel);

function can(perm) {
  return !!state.me && state.me.permissions.includes(perm);
}

function showLogin(message) {
  for (const v of Object.values(VIEWS)) v.hide?.();
  for (const section of document.querySelectorAll("main .view")) section.hidden = true;
  for (const b of document.querySelectorAll("#nav button")) b.classList.remove("on");
  state.me = null;
  state.view = null;
  $("#app").hidden = true;
  $("#login").hidden = false;
  $("#login-message").textContent = message || "";
  $("#login-form").password.value = "";
  $("#login-form").username.focus();
}

async function showApp(me) {
  state.me = me;
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#banner").hidden = true;
  $("#whoami").textContent = `${me.display_name || me.username} — ${t("role." + me.role)}`;
  // elements a role may not use are not shown at all (and never hold a handler that matters)
  for (const el of document.querySelectorAll("[data-perm]")) el.hidden = !can(el.dataset.perm);
  const first = [...document.querySelectorAll("#nav button")].find((b) => !b.hidden);
  if (first) select(first.dataset.view);
  else banner(t("app.nothing_for_role"));
}

export function banner(text) {
  $("#banner").textContent = text;
  $("#banner").hidden = !text;
}

function select(name) {
  const button = document.querySelector(`#nav button[data-view="${name}"]`);
  if (!button || button.hidden || state.view === name) return;
  if (state.view) {
    VIEWS[state.view].hide();
    $(`#view-${state.view}`).hidden = true;
  }
  for (const b of document.querySelectorAll("#nav button")) b.classList.toggle("on", b === button);
  state.view = name;
  $(`#view-${name}`).hidden = false;
  VIEWS[name].show({ can, me: state.me });
}

async function login(ev) {
  ev.preventDefault();
  const form = ev.target;
  $("#login-message").textContent = "";
  try {
    await api("POST", "/api/login", { username: form.username.value, password: form.password.value });
    await showApp(await api("GET", "/api/me"));
  } catch (err) {
    const key = { 401: "login.wrong", 429: "login.paused" }[err.status];
    $("#login-message").textContent = key ? t(key) : err.message;
  }
}

async function logout() {
  try {
    await api("POST", "/api/logout");
  } catch (err) {
    if (!(err instanceof ApiError)) throw err;
  }
  showLogin(t("login.bye"));
}

document.addEventListener("guetteur:expired", (ev) => {
  if (!state.me) return;
  showLogin(ev.detail === "session_expired" ? t("login.expired") : t("login.ended"));
});

document.addEventListener("keydown", (ev) => {
  if (!state.me || ev.ctrlKey || ev.altKey || ev.metaKey) return;
  if (ev.target.closest("input, textarea, select")) return;
  const button = document.querySelector(`#nav button[data-key="${ev.key}"]`);
  if (button && !button.hidden) {
    select(button.dataset.view);
    ev.preventDefault();
  } else if (ev.key === "l" || ev.key === "L") {
    switchLang();
  } else if (state.view) {
    VIEWS[state.view].key?.(ev);
  }
});

document.addEventListener("guetteur:lang", () => {
  if (!state.me) return;
  $("#whoami").textContent = `${state.me.display_name || state.me.username} — ${t("role." + state.me.role)}`;
  VIEWS[state.view]?.relabel?.();
});

async function boot() {
  await loadLabels();
  applyLabels();
  $("#login-form").addEventListener("submit", login);
  $("#logout").addEventListener("click", logout);
  for (const b of document.querySelectorAll(".lang-switch")) b.addEventListener("click", switchLang);
  for (const b of document.querySelectorAll("#nav button"))
    b.addEventListener("click", () => select(b.dataset.view));
  try {
    await showApp(await api("GET", "/api/me"));
  } catch {
    showLogin("");
  }
  document.body.dataset.ready = "1"; // the browser tests wait for this
}

boot();
