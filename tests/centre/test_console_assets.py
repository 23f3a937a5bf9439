"""The console's static files, checked without a browser: every file the page loads is shipped
(package data), every module import resolves, and every label the page uses exists in French
and in English with the same placeholders."""

from __future__ import annotations

import json
import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

from guetteur.centre.api import STATIC
from guetteur.sources import status
from guetteur.uplink.command_auth import ROLES

ROOT = Path(__file__).resolve().parents[2]
LABELS = json.loads((STATIC / "i18n.json").read_text(encoding="utf-8"))
SOURCES = {p.name: p.read_text(encoding="utf-8") for p in STATIC.iterdir() if p.is_file()}
# t("key"), data-i18n="key", data-i18n-placeholder="key", and keys held in tables ("live.limit")
USED = re.compile(
    r"""\bt\("([a-z_.]+)"|data-i18n(?:-placeholder|-title)?="([a-z_.]+)"|"((?:live|ptz|login|err|events|fleet)\.[a-z_]+)"\s*[,}]"""
)


def used_keys() -> set[str]:
    keys: set[str] = set()
    for name, text in SOURCES.items():
        if name.endswith((".js", ".html")):
            for match in USED.finditer(text):
                keys.add(next(g for g in match.groups() if g))
    return keys


def test_every_file_the_page_loads_exists_and_is_package_data() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["guetteur"]
    for name in SOURCES:
        rel = f"centre/static/{name}"
        assert any(fnmatch(rel, p) for p in patterns), f"{rel} is not package data"
    assert not [p for p in STATIC.iterdir() if p.is_dir()], "keep static/ flat (package data)"
    loaded = re.findall(r'(?:src|href)="/static/([^"]+)"', SOURCES["index.html"])
    loaded += [m for text in SOURCES.values() for m in re.findall(r'from "\./([^"]+)"', text)]
    loaded += re.findall(r'fetch\("/static/([^"]+)"', SOURCES["i18n.js"])
    assert {"app.js", "console.css", "i18n.json", "live.js", "ptz.js"} <= set(loaded)
    missing = sorted(set(loaded) - set(SOURCES))
    assert not missing, f"loaded but not shipped: {missing}"
    # no CDN: centres run on closed networks
    for name, text in SOURCES.items():
        assert not re.search(r"""(?:src|href|from|import)\s*=?\s*["']https?://""", text), name


def test_every_label_exists_in_french_and_english_with_the_same_placeholders() -> None:
    assert set(LABELS) == {"fr", "en"}
    assert set(LABELS["fr"]) == set(LABELS["en"])
    for key, french in LABELS["fr"].items():
        english = LABELS["en"][key]
        assert french.strip() and english.strip(), key
        assert set(re.findall(r"\{(\w+)\}", french)) == set(re.findall(r"\{(\w+)\}", english)), key
    used = used_keys()
    assert len(used) > 100
    missing = sorted(k for k in used if k not in LABELS["fr"] and not k.endswith("."))
    missing = [k for k in missing if k not in ("events.read", "events.handle", "fleet.read")]
    assert not missing, f"labels used but not defined: {missing}"
    # keys built at run time: every role, every camera and gateway state
    for role in ROLES:
        assert f"role.{role}" in LABELS["fr"], role
    camera_states = [v for k, v in vars(status).items() if k.isupper() and isinstance(v, str)]
    assert "stalled" in camera_states
    for state in ("online", "offline", *camera_states):
        assert f"state.{state}" in LABELS["fr"], state
