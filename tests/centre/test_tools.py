"""The centre's command-line tools as an administrator and an operator run them: real processes
(`guetteur centre serve`, `receive -c`, `user`, `config`, `db`, `key`, `snapshot`, `export`)
against a real Mosquitto."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from guetteur import keyfiles
from tests.centre.harness import PASSWORD, Api, Centre
from tests.centre.test_cluster import stored
from tests.fixtures.broker import MosquittoBroker
from tests.fixtures.waiting import wait_for
from tests.test_outbox import Agent, event

REPO = Path(__file__).resolve().parents[2]


def guetteur(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guetteur", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


def write_config(folder: Path, broker: MosquittoBroker, **extra: Any) -> Path:
    key = folder / "signing.pem"
    made = guetteur("centre", "key", "generate", str(key))
    assert made.returncode == 0 and "BEGIN PUBLIC KEY" in made.stdout, made.stderr
    config = folder / "centre.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "centre_id": "csu-cli",
                "server_id": "cli1",
                "database": {"url": f"sqlite:///{folder / 'centre.db'}"},
                "media_dir": str(folder / "media"),
                "signing_key_file": str(key),
                "mqtt": {"url": broker.url, "client_id": "rx-cli1"},
                "http": {"listen": "127.0.0.1", "port": 0},
                "extractions": {"dir": str(folder / "extractions")},
                **extra,
            }
        )
    )
    return config


@pytest.mark.slow
def test_an_administrator_sets_up_and_runs_a_centre(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    config = write_config(tmp_path, broker)
    check = guetteur("centre", "config", "check", str(config))
    assert check.returncode == 0 and "valid" in check.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("centre_id: x/y\nsigning_key_file: k\nhttp: {port: 99999, colour: red}\n")
    check = guetteur("centre", "config", "check", str(bad))
    assert check.returncode == 1
    for problem in (
        "centre_id: expected 1-64",
        "http.port:",
        "http.colour: unknown key",
    ):
        assert problem in check.stderr, check.stderr
    assert guetteur("centre", "key", "generate", str(tmp_path / "signing.pem")).returncode == 2
    assert "empty" in guetteur("centre", "db", "-c", str(config), "status").stdout
    assert "schema 0001" in guetteur("centre", "db", "-c", str(config), "upgrade").stdout
    added = guetteur("centre", "user", "-c", str(config), "add", "op1", "--role", "operator",
                     env={"GUETTEUR_NEW_PASSWORD": PASSWORD})  # fmt: skip
    assert added.returncode == 0, added.stderr
    short = guetteur("centre", "user", "-c", str(config), "add", "op2", "--role", "operator",
                     env={"GUETTEUR_NEW_PASSWORD": "short"})  # fmt: skip
    assert short.returncode == 2 and "at least 10 characters" in short.stderr
    token_file = tmp_path / "op1.token"
    made = guetteur("centre", "user", "-c", str(config), "token", "op1", "-o", str(token_file))
    assert made.returncode == 0 and oct(token_file.stat().st_mode)[-3:] == "600"
    listed = guetteur("centre", "user", "-c", str(config), "list").stdout
    assert "op1" in listed and "operator" in listed

    server = subprocess.Popen(
        [sys.executable, "-m", "guetteur", "centre", "serve", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    agent = Agent(broker, tmp_path / "agent", retry_s=2.0).start()
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert "listening on port" in line, line + (server.stderr.read() if server.stderr else "")
        api = Api(f"http://127.0.0.1:{int(line.rsplit(' ', 1)[1])}", token_file.read_text().strip())
        assert api.ok("GET", "/api/me")["username"] == "op1"
        for n in range(5):
            agent.outbox.submit(event(n))
        assert agent.outbox.wait_empty(20), agent.outbox.depth()
        assert len(api.ok("GET", "/api/events")["events"]) == 5
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        assert server.wait(15) == 0
        assert time.monotonic() - started < 10
    finally:
        agent.close()
        if server.poll() is None:
            server.kill()
    verified = guetteur("centre", "register", "-c", str(config), "verify")
    assert verified.returncode == 0 and "intact" in verified.stdout


def test_receive_is_the_store_only_mode_of_the_server(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    config = write_config(tmp_path, broker)
    proc = subprocess.Popen(
        [sys.executable, "-m", "guetteur", "centre", "receive", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    agent = Agent(broker, tmp_path / "agent", retry_s=2.0).start()
    try:
        for n in range(10):
            agent.outbox.submit(event(n))
        assert agent.outbox.wait_empty(20), agent.outbox.depth()
    finally:
        agent.close()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "events=10" in out
    assert len(stored(f"sqlite:///{tmp_path / 'centre.db'}")) == 10
    missing = guetteur("centre", "receive")
    assert missing.returncode == 2 and "give -c centre.yaml" in missing.stdout


@pytest.mark.slow
def test_snapshot_and_export_tools_go_through_the_server(
    broker: MosquittoBroker,
    centre_server: Callable[..., Centre],
    real_gateway: Callable[..., Any],
    tmp_path: Path,
) -> None:
    centre = centre_server(broker)
    real_gateway(broker)
    wait_for(lambda: centre.login("op1").ok("GET", "/api/gateways")["gateways"], 20, "gw1 known")
    env = {"GUETTEUR_SERVER": centre.url, "GUETTEUR_PASSWORD": PASSWORD}
    picture = tmp_path / "cam1.jpg"
    snap = guetteur("centre", "snapshot", "-u", "op1", "-g", "gw1", "--camera", "cam1",
                    "-o", str(picture), env=env)  # fmt: skip
    assert snap.returncode == 0, snap.stderr
    assert picture.read_bytes()[:2] == b"\xff\xd8"
    refused = guetteur(
        "centre", "snapshot", "-u", "view1", "-g", "gw1", "--camera", "cam1", env=env
    )
    assert refused.returncode == 1 and "forbidden" in refused.stderr

    time.sleep(6)  # recordings to extract
    now = time.time()
    from guetteur.timeutil import iso_ms

    out = tmp_path / "extraction"
    export = guetteur(
        "centre", "export", "-u", "sup1", "-g", "gw1", "--camera", "cam1",
        "--from", iso_ms(now - 5), "--to", iso_ms(now - 2),
        "--requisition", "PV 2026/77", "--officer", "OPJ Martin", "-o", str(out),
        env=env, timeout=120,
    )  # fmt: skip
    assert export.returncode == 0, export.stdout + export.stderr
    assert "sha256" in export.stdout and "verified" in export.stdout
    public = tmp_path / "centre.pem"
    public.write_bytes(keyfiles.public_pem(keyfiles.load_private(centre.key_file).public_key()))
    checked = guetteur("centre", "verify", str(out), "--key", str(public))
    assert checked.returncode == 0 and "VERIFIED" in checked.stdout
