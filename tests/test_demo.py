"""`guetteur demo` as a newcomer runs it: a real private broker, the centre server, a test camera,
events printed as the server's live feed pushes them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_prints_events_received_from_a_real_broker() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "guetteur", "demo", "--seconds", "12"],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "private broker on mqtt://127.0.0.1:" in out
    assert "centre server on http://127.0.0.1:" in out
    assert "centre: event start" in out
    assert "camera=demo-cam" in out
    assert "snapshot for event" in out
    assert "event message(s) received through the centre server's API" in out
