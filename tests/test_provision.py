"""First-boot provisioning against a fake boot-partition folder."""

from __future__ import annotations

import argparse
import json
import stat
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from guetteur.config import load_config
from guetteur.ops import provision as prov
from guetteur.ops.provision_report import REPORT_FILE
from tests.fixtures.broker import MosquittoBroker, free_port
from tests.helpers_pki import Issued, make_ca, make_server_cert

TOKEN = "enrol-7f3a9c1e-secret"


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path, Path]:
    boot, etc, state = tmp_path / "boot", tmp_path / "etc", tmp_path / "state"
    boot.mkdir()
    (boot / "config.txt").write_text("arm_64bit=1\n")  # what else lives on a Pi boot partition
    (boot / "centre-ca.pem").write_bytes(make_ca().cert_pem)
    return boot, etc, state


def good_file(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "version": 1,
        "gateway_id": "gw-rivoli-03",
        "site": "Rue de Rivoli / Châtelet",
        "broker_url": "mqtts://127.0.0.1:8883",
        "ca_certificate": "centre-ca.pem",
        "enrolment_token": TOKEN,
        "cameras": [
            {
                "id": "cam1",
                "url": "rtsp://127.0.0.1:8554/cam1",
                "username": "viewer",
                "password": "hunter2",
            },
            {"id": "cam2", "url": "rtsp://127.0.0.1:8554/cam2"},
        ],
    }
    data.update(overrides)
    return data


def write(boot: Path, data: object) -> None:
    (boot / prov.PROVISION_FILE).write_text(yaml.safe_dump(data, allow_unicode=True))


def run_cli(boot: Path, etc: Path, state: Path, broker_check: bool = False) -> int:
    parser = argparse.ArgumentParser()
    prov.add_arguments(parser)
    args = parser.parse_args(
        ([] if broker_check else ["--no-broker-check"])
        + [
            "--boot",
            str(boot),
            "--etc",
            str(etc),
            "--state",
            str(state),
            "--owner",
            "",
            "--data-dir",
            str(state / "data"),
            "--no-discover",
        ]
    )
    return prov.run(args)


def report(boot: Path) -> str:
    """The report left on the boot partition, as a technician's editor shows it."""
    return (boot / REPORT_FILE).read_bytes().decode("utf-8-sig").replace("\r\n", "\n")


def snapshot(*dirs: Path) -> dict[str, bytes]:
    out = {}
    for d in dirs:
        if d.exists():
            for p in sorted(d.rglob("*")):
                if p.is_file():
                    out[str(p)] = p.read_bytes()
    return out


def test_provisions_config_key_csr_and_removes_token(layout: tuple[Path, Path, Path]) -> None:
    boot, etc, state = layout
    write(boot, good_file())
    assert run_cli(boot, etc, state) == 0

    config = load_config(etc / "guetteur.yaml")
    assert config.gateway_id == "gw-rivoli-03"
    assert config.site == "Rue de Rivoli / Châtelet"
    assert config.mqtt.url == "mqtts://127.0.0.1:8883"
    assert config.mqtt.tls is not None and config.mqtt.tls.ca_file == str(etc / "ca.pem")
    assert [c.id for c in config.cameras] == ["cam1", "cam2"]
    assert config.cameras[0].password is not None
    assert config.cameras[0].password.get_secret_value() == "hunter2"
    assert config.data_dir == str(state / "data")
    assert (etc / "ca.pem").read_bytes() == (boot / "centre-ca.pem").read_bytes()

    key_path = etc / "device.key"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    csr = x509.load_pem_x509_csr((etc / "device.csr").read_bytes())
    assert csr.is_signature_valid
    assert csr.public_key() == key.public_key()
    cn = csr.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value
    assert cn == "gw-rivoli-03"

    token_path = etc / "enrolment.token"
    token = json.loads(token_path.read_text())
    assert token["token"] == TOKEN and token["expires"].endswith("Z")
    assert stat.S_IMODE(token_path.stat().st_mode) == 0o600
    # camera passwords live in the 0600 secrets file; the 0640 config only names them
    assert "hunter2" not in (etc / "guetteur.yaml").read_text()
    assert stat.S_IMODE((etc / "guetteur.yaml").stat().st_mode) == 0o640
    assert yaml.safe_load((etc / "secrets.yaml").read_text()) == {"camera-cam1": "hunter2"}
    assert stat.S_IMODE((etc / "secrets.yaml").stat().st_mode) == 0o600

    # the token and passwords are gone from every file on the FAT partition
    assert not (boot / prov.PROVISION_FILE).exists()
    for f in boot.iterdir():
        assert TOKEN not in f.read_text(errors="replace"), f
        assert "hunter2" not in f.read_text(errors="replace"), f
    applied = yaml.safe_load((boot / prov.APPLIED_FILE).read_text())
    assert applied["gateway_id"] == "gw-rivoli-03"
    assert (boot / "config.txt").read_text() == "arm_64bit=1\n"
    # no temporary file left behind
    assert not [p for p in list(etc.iterdir()) + list(boot.iterdir()) if p.name.endswith(".tmp")]

    marker = json.loads((state / ".provisioned").read_text())
    assert marker["gateway_id"] == "gw-rivoli-03" and marker["cameras"] == 2

    # nothing to do on the next boot
    assert run_cli(boot, etc, state) == 0


def test_reprovisioning_keeps_the_device_key(layout: tuple[Path, Path, Path]) -> None:
    boot, etc, state = layout
    write(boot, good_file())
    assert run_cli(boot, etc, state) == 0
    first_key = (etc / "device.key").read_bytes()
    write(boot, good_file(site="Place du Châtelet", enrolment_token="second-token"))
    assert run_cli(boot, etc, state) == 0
    assert (etc / "device.key").read_bytes() == first_key
    assert load_config(etc / "guetteur.yaml").site == "Place du Châtelet"
    assert json.loads((state / ".provisioned").read_text())["key_reused"] is True


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (good_file(gatway_id="typo"), "gatway_id: unknown key"),
        (
            {k: v for k, v in good_file().items() if k != "gateway_id"},
            "gateway_id: required key is missing",
        ),
        (
            good_file(broker_url="mqtts://centre:port"),
            "broker_url: 'mqtts://centre:port' does not parse",
        ),
        (
            good_file(broker_url="https://centre.example"),
            "broker_url: 'https://centre.example': expected mqtts://",
        ),
        (good_file(cameras="scan"), "cameras: expected a list of cameras or the word 'discover'"),
        (
            good_file(cameras=[{"id": "cam 1", "url": "rtsp://127.0.0.1/x"}]),
            "(generated config) cameras[0].id: expected 1-64 letters",
        ),
        (
            good_file(cameras=[{"id": "cam1", "url": "rtsp://127.0.0.1/x", "pasword": "x"}]),
            "cameras[0].pasword: unknown key",
        ),
        (good_file(ca_certificate="missing.pem"), "ca_certificate: cannot read missing.pem"),
        (good_file(ca_certificate="/etc/ssl/x.pem"), "ca_certificate: give a file name"),
        (good_file(ca_certificate="config.txt"), "ca_certificate: not a PEM certificate"),
        (good_file(cameras="discover"), "cameras: 'discover' needs the network"),
        (good_file(board="rpi3"), "board: unknown board 'rpi3'; known boards: generic-x86"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_changed(
    layout: tuple[Path, Path, Path],
    data: dict[str, object],
    expected: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    boot, etc, state = layout
    write(boot, data)
    before = snapshot(boot, etc, state)
    assert run_cli(boot, etc, state) == 2
    out = capsys.readouterr().out
    assert expected in out, out
    assert "nothing was changed" in out
    # the one file added: the report, on the boot partition, where the technician looks
    text = report(boot)
    assert "RÉSULTAT : REFUSÉ" in text and "RESULT: REFUSED" in text and expected in text
    (boot / REPORT_FILE).unlink()
    assert snapshot(boot, etc, state) == before
    assert not etc.exists() and not state.exists()


def test_expired_ca_is_refused(
    layout: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    boot, etc, state = layout
    (boot / "old-ca.pem").write_bytes(make_ca(days=-2, not_before_days=-400).cert_pem)
    write(boot, good_file(ca_certificate="old-ca.pem"))
    assert run_cli(boot, etc, state) == 2
    out = capsys.readouterr().out
    assert "ca_certificate: certificate expired on" in out
    assert (boot / prov.PROVISION_FILE).exists()
    assert not etc.exists()


def test_yaml_syntax_error_and_all_problems_at_once(
    layout: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    boot, etc, state = layout
    (boot / prov.PROVISION_FILE).write_text("gateway_id: [unclosed\n")
    assert run_cli(boot, etc, state) == 2
    assert "not valid YAML" in capsys.readouterr().out
    write(boot, good_file(gateway_id="bad id!", broker_url="ftp://x", extra=1))
    assert run_cli(boot, etc, state) == 2
    out = capsys.readouterr().out
    for key in ("gateway_id:", "broker_url:", "extra: unknown key"):
        assert key in out


def test_unknown_owner_is_refused(layout: tuple[Path, Path, Path]) -> None:
    boot, etc, state = layout
    write(boot, good_file())
    with pytest.raises(prov.ProvisionError, match="no-such-user-xyz"):
        prov.provision(boot, etc, state, owner="no-such-user-xyz", data_dir="/x")
    assert (boot / prov.PROVISION_FILE).exists() and not etc.exists()


def test_windows_bom_is_accepted(layout: tuple[Path, Path, Path]) -> None:
    boot, etc, state = layout
    text = yaml.safe_dump(good_file(), allow_unicode=True)
    (boot / prov.PROVISION_FILE).write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    assert run_cli(boot, etc, state) == 0
    assert load_config(etc / "guetteur.yaml").gateway_id == "gw-rivoli-03"


def test_board_override_is_kept_for_the_agent(layout: tuple[Path, Path, Path]) -> None:
    from guetteur.ops.hwprofile import detect_board

    boot, etc, state = layout
    write(boot, good_file(board="jetson-orin-nano"))
    assert run_cli(boot, etc, state) == 0
    assert (etc / "board").read_text() == "jetson-orin-nano\n"
    assert detect_board(model_path=boot / "no-model", board_file=etc / "board").board == (
        "jetson-orin-nano"
    )


def test_gateway_id_reserved_for_the_broker_is_refused(
    layout: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    boot, etc, state = layout
    for reserved in ("centre", "Centre-2", "op-bob", "broker"):
        write(boot, good_file(gateway_id=reserved))
        assert run_cli(boot, etc, state) == 2
        out = capsys.readouterr().out
        assert "gateway_id:" in out and "reserved for the centre's broker identities" in out
        assert not etc.exists()


def test_the_fat_copy_of_the_token_is_overwritten_before_it_is_unlinked(
    layout: tuple[Path, Path, Path],
) -> None:
    """A second name for the provisioning file's inode shows what stays in its clusters."""
    boot, etc, state = layout
    write(boot, good_file())
    witness = boot.parent / "witness"
    witness.hardlink_to(boot / prov.PROVISION_FILE)
    size = witness.stat().st_size
    assert TOKEN.encode() in witness.read_bytes()
    assert run_cli(boot, etc, state) == 0
    assert not (boot / prov.PROVISION_FILE).exists()
    assert witness.read_bytes() == b"\0" * size


def test_enrolment_token_goes_once_used_or_expired(layout: tuple[Path, Path, Path]) -> None:
    from tests.helpers_pki import make_client_cert

    boot, etc, state = layout
    write(boot, good_file(enrolment_token_ttl_hours=1))
    assert run_cli(boot, etc, state) == 0
    token = etc / "enrolment.token"
    assert prov.retire_enrolment_token(etc) is None and token.exists()  # still needed
    # the centre signed the CSR: the certificate for our key is installed, the token is used
    ca = make_ca()
    key = serialization.load_pem_private_key((etc / "device.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    (etc / "device.crt").write_bytes(make_client_cert(ca, key, "gw-rivoli-03").cert_pem)
    assert prov.retire_enrolment_token(etc) == "used: the device certificate is installed"
    assert not token.exists()
    # an unused token expires
    (etc / "device.crt").unlink()
    write(boot, good_file(enrolment_token_ttl_hours=1))
    assert run_cli(boot, etc, state) == 0
    assert prov.retire_enrolment_token(etc) is None
    import time

    assert prov.retire_enrolment_token(etc, now=time.time() + 3601) == "expired"
    assert not token.exists()


def test_a_device_certificate_given_up_front_leaves_no_token(
    layout: tuple[Path, Path, Path],
) -> None:
    boot, etc, state = layout
    ca = make_ca()
    (boot / "device.pem").write_bytes(make_server_cert_like(ca))
    write(boot, good_file(device_certificate="device.pem"))
    assert run_cli(boot, etc, state) == 0
    assert not (etc / "enrolment.token").exists()


def make_server_cert_like(ca: object) -> bytes:
    from tests.helpers_pki import Issued, make_server_cert

    assert isinstance(ca, Issued)
    return make_server_cert(ca).cert_pem


def test_centre_keys_are_provisioned_and_trusted(layout: tuple[Path, Path, Path]) -> None:
    from guetteur.runtime.command_path import load_trusted_keys
    from guetteur.uplink.command_auth import key_id
    from tests.fixtures.signing import make_centre_key

    boot, etc, state = layout
    old = make_centre_key(boot.parent / "keys", "old")
    new = make_centre_key(boot.parent / "keys", "new")
    (boot / "centre-old.pub").write_bytes(old.public_path.read_bytes())
    write(boot, good_file(centre_keys=["centre-old.pub", new.public_path.read_text()]))
    assert run_cli(boot, etc, state) == 0
    config = load_config(etc / "guetteur.yaml")
    keys, problems = load_trusted_keys(config.commands.trusted_keys)
    assert problems == []
    assert {key_id(k) for k in keys} == {
        key_id(old.private.public_key()),
        key_id(new.private.public_key()),
    }
    write(
        boot,
        good_file(centre_keys=["-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----"]),
    )
    assert run_cli(boot, etc, state) == 2


def tls_broker(directory: Path, ca: Issued) -> MosquittoBroker:
    """A Mosquitto whose TLS listener presents a certificate signed by ``ca``."""
    directory.mkdir()
    cert, key = make_server_cert(ca).write(directory, "server")
    port = free_port()
    conf = f"listener {port} 127.0.0.1\nallow_anonymous true\ncertfile {cert}\nkeyfile {key}\n"
    broker = MosquittoBroker(directory, port=port, extra_conf=conf, listen=False)
    broker.start()
    return broker


def test_a_wrong_broker_certificate_is_refused_with_a_report_then_the_fixed_file_applies(
    layout: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    boot, etc, state = layout
    centre_ca, other_ca = make_ca("Centre CA"), make_ca("Some other CA")
    broker = tls_broker(tmp_path / "broker", centre_ca)
    try:
        (boot / "wrong-ca.pem").write_bytes(other_ca.cert_pem)
        (boot / "centre-ca.pem").write_bytes(centre_ca.cert_pem)
        url = f"mqtts://127.0.0.1:{broker.port}"
        write(boot, good_file(broker_url=url, ca_certificate="wrong-ca.pem"))
        assert run_cli(boot, etc, state, broker_check=True) == 2
        text = report(boot)
        assert "RÉSULTAT : REFUSÉ" in text and "provision.broker_certificate" in text
        assert f"the broker 127.0.0.1:{broker.port} presented a certificate this CA" in text
        assert (boot / prov.PROVISION_FILE).exists() and not etc.exists()
        # the technician fixes the file and the box tries again at its next boot
        write(boot, good_file(broker_url=url, ca_certificate="centre-ca.pem"))
        assert run_cli(boot, etc, state, broker_check=True) == 0
        text = report(boot)
        assert "RESULT: APPLIED. Gateway gw-rivoli-03, 2 camera(s)." in text
        assert "its certificate verified by the CA" in text
        assert not (boot / prov.PROVISION_FILE).exists()
        assert load_config(etc / "guetteur.yaml").gateway_id == "gw-rivoli-03"
    finally:
        broker.stop()


def test_an_unreachable_broker_is_reported_but_applied(layout: tuple[Path, Path, Path]) -> None:
    boot, etc, state = layout
    write(boot, good_file(broker_url=f"mqtts://127.0.0.1:{free_port()}"))
    assert run_cli(boot, etc, state, broker_check=True) == 0
    text = report(boot)
    assert "RESULT: APPLIED" in text and "unreachable now" in text
    assert "The gateway keeps retrying" in text
    assert (etc / "guetteur.yaml").exists()


def test_camera_ptz_settings_reach_the_agent_config(layout: tuple[Path, Path, Path]) -> None:
    boot, etc, state = layout
    ptz = {"protocol": "pelco-d", "serial_port": "/dev/ttyS1", "address": 3}
    cams = [{"id": "dome", "url": "rtsp://127.0.0.1:8554/dome", "ptz": ptz}]
    write(boot, good_file(cameras=cams))
    assert run_cli(boot, etc, state) == 0
    cam = load_config(etc / "guetteur.yaml").cameras[0]
    assert cam.ptz is not None and cam.ptz.serial_port == "/dev/ttyS1" and cam.ptz.address == 3
    write(boot, good_file(cameras=[{**cams[0], "ptz": {"protocol": "smoke-signals"}}]))
    assert run_cli(boot, etc, state) == 2
    assert "cameras[0].ptz.protocol" in report(boot)


def test_a_write_failure_leaves_a_report_and_the_file_for_next_boot(
    layout: tuple[Path, Path, Path],
) -> None:
    boot, etc, state = layout
    etc.write_text("a file where /etc/guetteur should be a directory\n")
    write(boot, good_file())
    assert run_cli(boot, etc, state) == 2
    text = report(boot)
    assert "provision.write" in text and "cannot write" in text and str(etc) in text
    assert (boot / prov.PROVISION_FILE).exists()
