"""Gateway.stop is called from the signal handler and again from ``finally`` blocks: the second
call must do nothing (it used to raise on the event journal's closed database)."""

from __future__ import annotations

import socket
from pathlib import Path

from guetteur.config import validate_config
from guetteur.runtime.gateway import Gateway


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_second_stop_does_nothing(tmp_path: Path) -> None:
    config = validate_config(
        {
            "gateway_id": "gw-stop",
            "data_dir": str(tmp_path / "gateway"),
            "mqtt": {"url": f"mqtt://127.0.0.1:{unused_port()}"},  # no broker: the link retries
            "cameras": [{"id": "cam", "url": "test:quiet"}],
        }
    )
    gateway = Gateway(config)
    gateway.start()
    gateway.stop()
    gateway.stop()
    assert gateway.workers["cam"].lingering_threads() == []
