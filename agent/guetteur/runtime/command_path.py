"""Builds the gateway's command path from its config: the centre's trusted keys, the nonce memory
that survives restarts, the audit trail with its own budget, and the dispatcher's quotas."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from guetteur.config import GuetteurConfig
from guetteur.keyfiles import KeyFileError, load_public_keys
from guetteur.uplink.audit import AuditTrail
from guetteur.uplink.command_auth import Verifier
from guetteur.uplink.commands import CommandDispatcher
from guetteur.uplink.nonces import PersistentNonces
from guetteur.uplink.outbox.service import Outbox
from guetteur.uplink.publish import Publisher

log = logging.getLogger(__name__)

NONCE_FILE = "command-nonces"


def load_trusted_keys(paths: Iterable[str | Path]) -> tuple[list[Ed25519PublicKey], list[str]]:
    """The keys of every usable file, and one sentence per file that is not (the gateway starts
    anyway and refuses every command until a key is provisioned)."""
    keys: list[Ed25519PublicKey] = []
    problems: list[str] = []
    for path in paths:
        try:
            keys += load_public_keys(path)
        except KeyFileError as exc:
            problems.append(f"centre key file: {exc.message}")
    return keys, problems


def build_command_path(
    config: GuetteurConfig,
    publisher: Publisher,
    outbox: Outbox | None,
    data_dir: Path,
    warnings: list[str],
) -> tuple[AuditTrail, CommandDispatcher]:
    cmds = config.commands

    def pending_audit() -> int:
        return int(outbox.depth()["audit"]) if outbox is not None else 0

    audit = AuditTrail(
        publisher,
        config.gateway_id,
        budget_records=cmds.audit_budget_records,
        pending=pending_audit,
        field_chars=cmds.audit_field_chars,
    )
    keys, problems = load_trusted_keys(cmds.trusted_keys)
    for problem in problems:
        log.error("commands: %s", problem)
    if not keys:
        warnings.append(
            "no centre signing key is trusted (commands.trusted_keys): every command is refused"
        )
        log.error(
            "commands: no centre signing key could be loaded from %s; every command will be "
            "refused until one is provisioned (guetteur provision, or commands.trusted_keys)",
            ", ".join(cmds.trusted_keys) or "(none configured)",
        )
    verifier = Verifier(
        keys,
        config.gateway_id,
        skew_s=cmds.max_clock_skew_s,
        nonces=PersistentNonces(data_dir / NONCE_FILE, time.time()),
    )
    log.info("commands: trusting centre key(s) %s", ", ".join(verifier.key_ids) or "none")
    dispatcher = CommandDispatcher(
        audit,
        rate_per_s=cmds.rate_per_s,
        burst=cmds.burst,
        verifier=verifier,
        gateway_rate_per_s=cmds.refusals_audited_per_s,
        verb_quotas={
            "snapshot": (cmds.snapshots_per_minute / 60.0, max(1, cmds.snapshots_per_minute // 4)),
            "export": (cmds.exports_per_hour / 3600.0, max(1, cmds.exports_per_hour // 4)),
        },
    )
    return audit, dispatcher
