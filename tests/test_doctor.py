"""`guetteur doctor` against a real Mosquitto (TLS listener) and a real RTSP camera on loopback."""

from __future__ import annotations

import argparse
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from guetteur.config import CameraConfig
from guetteur.ops import doctor
from guetteur.ops.checks.cameras import probe_camera
from tests.fixtures.broker import MosquittoBroker, free_port
from tests.fixtures.rtsp import RtspServerFactory
from tests.helpers_pki import make_ca, make_server_cert


def tls_broker(workdir: Path, server_days: float = 90) -> tuple[MosquittoBroker, int, Path]:
    ca = make_ca()
    server = make_server_cert(ca, days=server_days) if server_days > 0 else None
    if server is None:  # an already expired broker certificate
        import datetime as dt

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "127.0.0.1")])
        import ipaddress

        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(ca.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=60))
            .not_valid_after(now - dt.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
            .sign(ca.key, hashes.SHA256())
        )
        from tests.helpers_pki import Issued

        server = Issued(cert, key)
    ca_path = workdir / "ca.pem"
    ca_path.write_bytes(ca.cert_pem)
    cert_path, key_path = server.write(workdir, "server")
    tls_port = free_port()
    extra = (
        f"listener {tls_port} 127.0.0.1\ncafile {ca_path}\ncertfile {cert_path}\n"
        f"keyfile {key_path}\n"
    )
    broker = MosquittoBroker(workdir, extra_conf=extra)
    broker.start()
    return broker, tls_port, ca_path


@pytest.fixture
def tls_broker_factory(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    started: list[MosquittoBroker] = []

    def make(server_days: float = 90) -> tuple[MosquittoBroker, int, Path]:
        b, port, ca = tls_broker(tmp_path_factory.mktemp("tlsbroker"), server_days)
        started.append(b)
        return b, port, ca

    yield make
    for b in started:
        b.stop()


@pytest.fixture
def password_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A Mosquitto that refuses anonymous clients and knows gateway / s3cret; yields its port."""
    workdir = tmp_path_factory.mktemp("passwd-broker")
    passwd = workdir / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "gateway", "s3cret"], check=True)
    port = free_port()
    broker = MosquittoBroker(
        workdir,
        port=port,
        listen=False,
        extra_conf=f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n",
    )
    broker.start()
    yield port
    broker.stop()


def write_config(
    path: Path,
    tmp: Path,
    tls_port: int,
    ca: Path,
    cameras: list[dict[str, str]],
    mqtt: dict[str, object] | None = None,
) -> Path:
    config = {
        "gateway_id": "gw-doctor",
        "data_dir": str(tmp / "data"),
        "mqtt": mqtt or {"url": f"mqtts://127.0.0.1:{tls_port}", "tls": {"ca_file": str(ca)}},
        "cameras": cameras,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o640)
    return path


def run_doctor(config: Path, *extra: str) -> int:
    parser = argparse.ArgumentParser()
    doctor.add_arguments(parser)
    args = parser.parse_args(
        [
            "-c",
            str(config),
            "--timeout",
            "10",  # generous: a loaded CI box can take seconds to open RTSP; the dead port fails fast
            "--write-mb",
            "8",
            "--board",
            "generic-x86",
            "--sample",
            "1",
            *extra,
        ]
    )
    return doctor.run(args)


@pytest.mark.slow
def test_doctor_passes_then_reports_unreachable_camera(
    rtsp_server: RtspServerFactory,
    tls_broker_factory: Callable[..., tuple[MosquittoBroker, int, Path]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    camera = rtsp_server()
    _, tls_port, ca = tls_broker_factory()
    cfg = write_config(
        tmp_path / "g.yaml", tmp_path, tls_port, ca, [{"id": "cam1", "url": camera.url}]
    )

    assert run_doctor(cfg) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    lines = out.splitlines()
    cam_line = next(line for line in lines if line.startswith("PASS  camera cam1"))
    assert "h264 640x360" in cam_line
    fps = float(cam_line.split(" fps")[0].rsplit(" ", 1)[1])
    assert 20 <= fps <= 30
    assert any(line.startswith("PASS  broker 127.0.0.1") and "TLS" in line for line in lines)
    assert any(line.startswith("PASS  broker-certificate") and "days" in line for line in lines)
    assert any(line.startswith("PASS  disk-write") for line in lines)
    assert not any(line.startswith("FAIL") for line in lines)
    assert lines[-1].startswith("READY:")

    # a second camera nobody serves: a failing line naming it, and what to do
    dead_port = free_port()
    cfg = write_config(
        tmp_path / "g2.yaml",
        tmp_path,
        tls_port,
        ca,
        [
            {"id": "cam1", "url": camera.url},
            {"id": "cam2", "url": f"rtsp://127.0.0.1:{dead_port}/cam"},
        ],
    )
    assert run_doctor(cfg) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    fail = [line for line in lines if line.startswith("FAIL")]
    assert len(fail) == 1 and fail[0].startswith("FAIL  camera cam2"), out
    assert f"127.0.0.1:{dead_port}" in fail[0]
    action = lines[lines.index(fail[0]) + 1]
    assert "→" in action
    assert any(line.startswith("PASS  camera cam1") for line in lines)
    assert lines[-1].startswith("NOT READY:")

    assert run_doctor(cfg, "--json") == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    verdicts = {(c["check"], c["subject"]): c["verdict"] for c in report["checks"]}
    assert verdicts[("camera", "cam2")] == "FAIL"
    assert verdicts[("camera", "cam1")] == "PASS", report["checks"]


def test_doctor_fails_expired_broker_certificate_and_dead_broker(
    tls_broker_factory: Callable[..., tuple[MosquittoBroker, int, Path]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    broker, tls_port, ca = tls_broker_factory(server_days=-1)
    cfg = write_config(tmp_path / "g.yaml", tmp_path, tls_port, ca, [])
    assert run_doctor(cfg) == 1
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("FAIL  broker"))
    assert "expired" in line
    assert "→" in out

    broker.kill()
    assert run_doctor(cfg) == 1
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("FAIL  broker"))
    assert "cannot connect" in line


def test_doctor_bad_config_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("gateway_id: gw1\nmqtt: {url: 'http://x'}\ncamras: []\n")
    assert run_doctor(cfg) == 2
    out = capsys.readouterr().out
    assert out.startswith("FAIL  config")
    assert "mqtt.url" in out and "camras: unknown key" in out


def test_doctor_uses_the_broker_credentials_of_the_url(
    password_broker: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The agent takes user:password from mqtt.url when mqtt.username is unset; so does doctor."""

    def broker_line(password: str) -> tuple[int, str]:
        url = f"mqtt://gateway:{password}@127.0.0.1:{password_broker}"
        cfg = write_config(tmp_path / "g.yaml", tmp_path, 0, tmp_path, [], mqtt={"url": url})
        code = run_doctor(cfg)
        out = capsys.readouterr().out
        assert password not in out  # the URL's password never reaches the report
        return code, next(line for line in out.splitlines() if " broker " in f" {line} ")

    code, line = broker_line("s3cret")
    assert line.startswith(f"WARN  broker 127.0.0.1:{password_broker}"), line  # no TLS: advice
    assert "accepted the connection" in line
    assert code == 0

    code, line = broker_line("wrong")
    assert line.startswith(f"FAIL  broker 127.0.0.1:{password_broker}"), line
    assert "MQTT connect refused: Not authorized" in line
    assert code == 1


def test_camera_probe_goes_through_the_source_credentials_and_sentences(
    rtsp_server: RtspServerFactory,
) -> None:
    """Credentials from the camera config (not the URL) reach the camera as the agent sends them;
    a refusal is the source's own sentence, with what to do."""
    camera = rtsp_server(user="operator", password="right-one")
    good = CameraConfig(id="c1", url=camera.url, username="operator", password="right-one")
    check = probe_camera(good, timeout_s=10, sample_s=1)
    assert check.verdict == "PASS", check
    assert "h264 640x360" in check.detail and "right-one" not in check.detail

    bad = CameraConfig(id="c1", url=camera.url, username="operator", password="wrong-one")
    check = probe_camera(bad, timeout_s=10, sample_s=1)
    assert check.verdict == "FAIL", check
    assert "refused the credentials" in check.detail and "retrying" not in check.detail
    assert "wrong-one" not in check.detail
    assert check.action == "check the camera's username/password in the config"
