// Labels in French (the default: the operators are French) and English, from i18n.json.
// One dictionary for the whole console; tests/centre/test_console_assets.py checks that every
// key used here or in index.html exists in both languages.
let dict = { fr: {}, en: {} };
let lang = localStorage.getItem("guetteur.lang") === "en" ? "en" : "fr";

export async function loadLabels() {
  const resp = await fetch("/static/i18n.json", { cache: "no-cache" });
  dict = await resp.json();
}

export function currentLang() {
  return lang;
}

// t("live.ended", {reason}) → the label with {reason} filled in; an unknown key shows itself
// (visible in the page and caught by the asset test) rather than an empty string.
export function t(key, vars = {}) {
  const text = dict[lang][key] ?? dict.fr[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => (name in vars ? String(vars[name]) : `{${name}}`));
}

export function applyLabels(root = document) {
  document.documentElement.lang = lang;
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-placeholder]"))
    el.placeholder = t(el.dataset.i18nPlaceholder);
  for (const el of root.querySelectorAll("[data-i18n-title]")) el.title = t(el.dataset.i18nTitle);
}

export function switchLang() {
  lang = lang === "fr" ? "en" : "fr";
  localStorage.setItem("guetteur.lang", lang);
  applyLabels();
  document.dispatchEvent(new CustomEvent("guetteur:lang"));
}

// Times as the operators read them (local wall clock) from the API's UTC ISO 8601.
export function localTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString(lang === "fr" ? "fr-FR" : "en-GB");
}

// A datetime-local input's value (local time) as UTC ISO 8601 with milliseconds, or "".
export function inputToIso(value) {
  if (!value) return "";
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? "" : d.toISOString();
}
