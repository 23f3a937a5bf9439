# Guetteur developer entry points. `make demo` and `make test` work on a fresh Debian/Ubuntu/Pi OS.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup system venv demo test test-fast lint typecheck check clean console-shots

setup: system venv

# System packages (mosquitto, ffmpeg, GStreamer RTSP server, socat); sudo when not root.
system:
	@scripts/setup-system

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: setup
	$(BIN)/guetteur demo --seconds 30

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

# Everything: lint, types and every test (several minutes).
test: setup lint typecheck
	$(BIN)/pytest -q

# Lint, types and the tests not marked slow: under a minute, for the edit-test loop.
test-fast: setup lint typecheck
	$(BIN)/pytest -q -m "not slow"

# The console's screenshots in docs/console/, retaken by its browser tests.
console-shots: setup
	GUETTEUR_UPDATE_SCREENSHOTS=1 $(BIN)/pytest -q tests/centre/test_console_browser.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
