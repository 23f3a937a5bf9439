"""centre.yaml: validated like the gateway's file, and its reference in docs/ is current."""

from __future__ import annotations

from pathlib import Path

import pytest

from guetteur.centre.admin.config import reference
from guetteur.centre.config import load_centre_config, validate_centre_config
from guetteur.config import ConfigError

DOC = Path(__file__).resolve().parents[2] / "docs" / "centre-config-reference.md"


def test_the_reference_in_docs_is_current() -> None:
    assert DOC.read_text() == reference(), (
        "docs/centre-config-reference.md is stale: regenerate it with "
        "`.venv/bin/guetteur centre config reference > docs/centre-config-reference.md`"
    )


def test_every_problem_is_named_with_its_key_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError) as info:
        validate_centre_config(
            {
                "centre_id": "csu nancy",
                "database": {"url": "mysql://x", "pool": 3},
                "mqtt": {"url": "http://broker", "root": "a/#"},
                "retention": {"max_age_days": 45},
                "http": {"password": "${env:GUETTEUR_NOT_SET}"},
            }
        )
    assert info.value.problems == [
        "http.password: environment variable GUETTEUR_NOT_SET is not set",
        "centre_id: expected 1-64 letters, digits, '-' or '_'",
        "database.url: expected postgresql+psycopg://… or sqlite:////path/centre.db",
        "database.pool: unknown key",
        "signing_key_file: required key is missing",
        "mqtt.url: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]",
        "mqtt.root: expected a topic prefix without wildcards or leading/trailing '/'",
        "http.password: unknown key",
        "retention.max_age_days: Input should be less than or equal to 30",
    ]
    monkeypatch.setenv("CENTRE_ID", "csu-nancy")
    path = tmp_path / "centre.yaml"
    path.write_text("centre_id: ${env:CENTRE_ID}\nsigning_key_file: k.pem\n")
    config = load_centre_config(path)
    assert config.centre_id == "csu-nancy" and config.retention.max_age_days == 30
