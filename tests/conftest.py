"""Shared pytest setup: real peers (broker, RTSP server, serial pty, ONVIF camera) as fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.broker",
    "tests.fixtures.media",
    "tests.fixtures.rtsp",
    "tests.fixtures.serial",
    "tests.fixtures.onvif",
]

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared beside the checkout (design, test media, models)."""
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} is missing: tests read test media and models from ../shared")
    return SHARED
