"""Config validation: typed objects, every error with its key path, all at once; secrets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from guetteur.config import ConfigError, load_config, redact_url, validate_config

GOOD = {
    "gateway_id": "gw-chambery-01",
    "data_dir": "/tmp/guetteur-test",
    "mqtt": {"url": "mqtts://centre.example:8883", "tls": {"ca_file": "/etc/ca.pem"}},
    "cameras": [
        {
            "id": "place-1",
            "url": "rtsp://10.0.0.5/stream1",
            "username": "viewer",
            "password": "s3cret",
            "analytic_fps": 4,
            "privacy_masks": [[[0.1, 0.1], [0.3, 0.1], [0.3, 0.4]]],
        },
        {"id": "test-cam", "url": "test:walk?start=5&end=8"},
    ],
}


def test_good_config_gives_typed_objects() -> None:
    cfg = validate_config(GOOD)
    assert cfg.gateway_id == "gw-chambery-01"
    assert cfg.cameras[0].analytic_fps == 4.0
    assert cfg.cameras[0].analytic_width == 320  # default
    assert cfg.cameras[1].analytic_fps == 5.0  # default
    assert cfg.events.pre_roll_s == 5.0
    assert cfg.recording.legal_max_age_days == 30.0
    assert cfg.cameras[0].privacy_masks[0][1] == (0.3, 0.1)


def test_every_error_named_by_key_path_at_once() -> None:
    bad = {
        "gateway_id": "gw 1",
        "mqtt": {"url": "http://broker", "keepalive_s": 1},
        "cameras": [
            {"id": "ok", "url": "test:quiet"},
            {"id": "cam2", "url": "http://not-a-camera", "fps": 5},
            {"url": "rtsp://x", "ignore_masks": [[[0.1, 0.1], [2.0, 0.1]]]},
        ],
        "unknown_section": {},
    }
    with pytest.raises(ConfigError) as info:
        validate_config(bad)
    problems = "\n".join(info.value.problems)
    assert "gateway_id: expected 1-64 letters" in problems
    assert "mqtt.url: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]" in problems
    assert "mqtt.keepalive_s:" in problems
    assert (
        "cameras[1].url: expected rtsp://, rtsps://, file:, test:, picamera2: or v4l2:" in problems
    )
    assert "cameras[1].fps: unknown key" in problems
    assert "cameras[2].id: required key is missing" in problems
    assert "cameras[2].ignore_masks[0]" in problems  # a 2-point polygon, a point out of 0..1
    assert "unknown_section: unknown key" in problems
    assert len(info.value.problems) >= 8


def test_duplicate_camera_ids_refused() -> None:
    with pytest.raises(ConfigError, match="used twice"):
        validate_config({"gateway_id": "g", "cameras": [{"id": "a", "url": "test:quiet"}] * 2})


def test_secrets_from_env_file_and_secrets_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "secrets.yaml").write_text("cam_pw: from-secrets-file\n")
    (tmp_path / "mqtt_pw").write_text("from-file\n")
    monkeypatch.setenv("GUETTEUR_TEST_USER", "operator")
    cfg = validate_config(
        {
            "gateway_id": "g",
            "secrets_file": str(tmp_path / "secrets.yaml"),
            "mqtt": {
                "username": "${env:GUETTEUR_TEST_USER}",
                "password": f"${{file:{tmp_path / 'mqtt_pw'}}}",
            },
            "cameras": [
                {
                    "id": "c",
                    "url": "rtsp://10.1.1.1/s",
                    "username": "u",
                    "password": "${secret:cam_pw}",
                }
            ],
        }
    )
    assert cfg.mqtt.username == "operator"
    assert cfg.mqtt.password is not None
    assert cfg.mqtt.password.get_secret_value() == "from-file"
    cam = cfg.cameras[0]
    assert cam.stream_url() == "rtsp://u:from-secrets-file@10.1.1.1/s"
    # Secrets never print: not in the model's repr, not in a redacted URL.
    assert "from-secrets-file" not in repr(cfg)
    assert "from-file" not in repr(cfg)
    assert redact_url(cam.stream_url()) == "rtsp://u:***@10.1.1.1/s"


def test_missing_secret_sources_are_errors_with_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GUETTEUR_NOPE", raising=False)
    with pytest.raises(ConfigError) as info:
        validate_config(
            {
                "gateway_id": "g",
                "mqtt": {"password": "${env:GUETTEUR_NOPE}"},
                "cameras": [{"id": "c", "url": "test:quiet", "password": "${secret:x}"}],
            }
        )
    problems = "\n".join(info.value.problems)
    assert "mqtt.password: environment variable GUETTEUR_NOPE is not set" in problems
    assert "cameras[0].password: ${secret:x} used but no secrets_file is set" in problems


def test_yaml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("gateway_id: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guetteur", "config", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
def test_config_check_cli_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(GOOD))
    result = _check(good)
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "gateway_id": "g",
                "cameras": [{"id": "c", "url": "ftp://x"}],
                "mqtt": {"password": "hunter2", "url": "nope"},
            }
        )
    )
    result = _check(bad)
    assert result.returncode == 1
    assert "cameras[0].url: expected rtsp://" in result.stderr
    assert "mqtt.url:" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_config_reference_lists_every_key() -> None:
    from guetteur.config.reference import config_reference

    text = config_reference()
    for key in (
        "`gateway_id`",
        "`cameras[].url`",
        "`cameras[].motion.threshold`",
        "`events.pre_roll_s`",
        "`mqtt.tls.cert_file`",
    ):
        assert key in text
    # every row has a description
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert rows and all(not line.rstrip().endswith("|  |") for line in rows)


def test_committed_config_reference_is_current() -> None:
    from guetteur.config.reference import config_reference

    committed = Path(__file__).resolve().parents[1] / "docs" / "config-reference.md"
    assert committed.read_text() == config_reference(), (
        "docs/config-reference.md is stale: regenerate it with "
        "`.venv/bin/guetteur config reference > docs/config-reference.md`"
    )
