"""Shared pytest setup: real peers (broker, RTSP server, serial pty, ONVIF camera) and the
committed test models and footage, as fixtures."""

pytest_plugins = [
    "tests.fixtures.broker",
    "tests.fixtures.media",
    "tests.fixtures.models",
    "tests.fixtures.rtsp",
    "tests.fixtures.serial",
    "tests.fixtures.onvif",
    "tests.fixtures.signing",
    "tests.fixtures.shipped_broker",
    "tests.fixtures.postgres",
    "tests.fixtures.netns",
    "tests.fixtures.browser",
    "tests.centre.harness",
]
