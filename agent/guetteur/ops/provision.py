"""First-boot provisioning from the boot (FAT) partition: ``guetteur provision``.

The technician copies ``guetteur-provision.yaml`` (and the centre's CA certificate) onto the boot
partition of a freshly flashed card. On first boot ``guetteur-provision.service`` runs this:

1. read and validate the file; every problem names its key path (all at once);
2. build the agent config and validate it with :func:`guetteur.config.validate_config`;
3. generate the device key (EC P-256, mode 0600) unless one exists, and a CSR for it;
4. commit: every file is written under a temporary name and renamed into ``/etc/guetteur``;
   secrets never go into the 0640 config: camera passwords go to ``secrets.yaml`` (0600, the
   config names them ``${secret:...}``), the enrolment token to ``enrolment.token`` (0600, with
   its expiry; not kept at all when the device certificate came with the file);
5. rewrite the provisioning file on the FAT partition without the token, as
   ``guetteur-provision.applied.yaml`` (so the unit does not run again), and remove the original
   after overwriting its bytes (FAT has no copy-on-write: the token's clusters are zeroed);
6. mark done: ``/var/lib/guetteur/.provisioned``.

The enrolment token is retired (overwritten, then deleted) once the gateway holds a device
certificate for its key, or once it expired: :func:`retire_enrolment_token`, run by provisioning
and by ``guetteur doctor``. The centre's command-signing public keys (``centre_keys``) are
written to ``centre-keys.pem``, which ``commands.trusted_keys`` names.

Nothing is written before everything validated; a crash in steps 4-6 leaves the original file in
place, and the next boot applies it again (the device key is reused, so the CSR stays valid).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import pwd
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from guetteur.config import ConfigError, validate_config
from guetteur.keyfiles import KeyFileError, parse_public_keys, public_pem
from guetteur.ops.enrolment import CERT_FILE, KEY_FILE, TOKEN_FILE, overwrite_and_unlink
from guetteur.ops.enrolment import retire_enrolment_token as retire_enrolment_token
from guetteur.ops.provision_file import PROVISION_FILE as PROVISION_FILE
from guetteur.ops.provision_file import DiscoverCredentials as DiscoverCredentials
from guetteur.ops.provision_file import ProvisionError as ProvisionError
from guetteur.ops.provision_file import ProvisionFile as ProvisionFile
from guetteur.ops.provision_file import parse_provision_text as parse_provision_text
from guetteur.ops.provision_report import (
    REPORT_FILE,
    BrokerProbe,
    probe_broker,
    report_applied,
    report_refused,
)
from guetteur.timeutil import iso_ms

log = logging.getLogger(__name__)

APPLIED_FILE = "guetteur-provision.applied.yaml"
CONFIG_FILE = "guetteur.yaml"
CA_FILE = "ca.pem"
CSR_FILE = "device.csr"
SECRETS_FILE = "secrets.yaml"
CENTRE_KEYS_FILE = "centre-keys.pem"
DONE_MARKER = ".provisioned"
BOARD_FILE = "board"  # read by guetteur.ops.hwprofile.detect_board (/etc/guetteur/board)


@dataclass
class ProvisionPlan:
    """Everything that will be written, fully validated, before anything is."""

    source: ProvisionFile
    config_yaml: str
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # name → (content, mode)
    cameras: int = 0
    key_reused: bool = False


def _read_pem(value: str, boot_dir: Path, key: str, problems: list[str]) -> bytes | None:
    if "-----BEGIN" in value:
        return value.encode()
    path = boot_dir / value
    if Path(value).is_absolute() or ".." in Path(value).parts:
        problems.append(f"{key}: give a file name on the boot partition, not a path ({value!r})")
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        problems.append(f"{key}: cannot read {value} on the boot partition: {exc.strerror}")
        return None


def check_certificate(
    pem: bytes, key: str, problems: list[str], now: dt.datetime | None = None
) -> x509.Certificate | None:
    """Parse one PEM certificate; refuse expired or not-yet-valid ones with a sentence."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        problems.append(f"{key}: not a PEM certificate (expected -----BEGIN CERTIFICATE-----)")
        return None
    now = now or dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc <= now:
        problems.append(
            f"{key}: certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}; ask the "
            "centre for a current one"
        )
    elif cert.not_valid_before_utc > now:
        problems.append(
            f"{key}: certificate is valid only from {cert.not_valid_before_utc:%Y-%m-%d %H:%M}"
            " UTC; check the gateway's clock (NTP) or the certificate"
        )
    return cert


def load_or_create_key(existing: bytes | None) -> tuple[ec.EllipticCurvePrivateKey, bool]:
    """Reuse a valid existing P-256 device key (re-provisioning keeps the identity), else create."""
    if existing:
        try:
            key = serialization.load_pem_private_key(existing, password=None)
            if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1":
                return key, True
        except (ValueError, TypeError):
            log.warning("existing device key is unreadable: a new one is generated")
    return ec.generate_private_key(ec.SECP256R1()), False


def make_csr(key: ec.EllipticCurvePrivateKey, gateway_id: str, site: str | None) -> bytes:
    attrs = [
        x509.NameAttribute(NameOID.COMMON_NAME, gateway_id),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "guetteur-gateway"),
    ]
    if site:
        attrs.append(x509.NameAttribute(NameOID.LOCALITY_NAME, site[:128]))
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(attrs))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(gateway_id)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


DiscoverFn = Callable[[DiscoverCredentials | None], list[dict[str, Any]]]


def plan_provisioning(
    boot_dir: Path,
    etc_dir: Path,
    data_dir: str = "/var/lib/guetteur",
    discover_cameras: DiscoverFn | None = None,
) -> ProvisionPlan:
    """Read, validate and prepare everything in memory. Raises ProvisionError; writes nothing."""
    prov_path = boot_dir / PROVISION_FILE
    try:
        text = prov_path.read_text(encoding="utf-8-sig")  # Windows editors add a BOM
    except OSError as exc:
        raise ProvisionError(
            "provision.missing", [f"{prov_path}: cannot read: {exc.strerror}"]
        ) from None
    prov = parse_provision_text(text, PROVISION_FILE)
    problems: list[str] = []
    files: dict[str, tuple[bytes, int]] = {}

    tls: dict[str, str] = {}
    if prov.ca_certificate:
        pem = _read_pem(prov.ca_certificate, boot_dir, "ca_certificate", problems)
        if pem is not None and check_certificate(pem, "ca_certificate", problems) is not None:
            files[CA_FILE] = (pem, 0o644)
            tls["ca_file"] = str(etc_dir / CA_FILE)
    elif prov.broker_url.startswith("mqtts://"):
        log.info("no ca_certificate: the broker's certificate is checked against the system CAs")
    if prov.device_certificate:
        pem = _read_pem(prov.device_certificate, boot_dir, "device_certificate", problems)
        if pem is not None and check_certificate(pem, "device_certificate", problems) is not None:
            files[CERT_FILE] = (pem, 0o644)

    cameras: list[dict[str, Any]] = []
    secrets: dict[str, str] = {}
    if isinstance(prov.cameras, str):
        if discover_cameras is None:
            problems.append("cameras: 'discover' needs the network, which is not available here")
        else:
            cameras = discover_cameras(prov.discover)
            if not cameras:
                log.warning(
                    "cameras: discover found no ONVIF camera; the config has none. Check "
                    "the cameras are powered and on this LAN, then run `guetteur discover`"
                )
    else:
        for cam in prov.cameras:
            entry: dict[str, Any] = {"id": cam.id, "url": cam.url}
            if cam.sub_url:
                entry["sub_url"] = cam.sub_url
            if cam.username:
                entry["username"] = cam.username
            if cam.password is not None:
                entry["password"] = cam.password.get_secret_value()
            if cam.ptz is not None:
                entry["ptz"] = cam.ptz
            cameras.append(entry)
    for entry in cameras:  # clear-text passwords go to the 0600 secrets file, never the config
        if isinstance(entry.get("password"), str):
            name = f"camera-{entry['id']}"
            secrets[name] = entry["password"]
            entry["password"] = "${secret:" + name + "}"

    trusted: list[bytes] = []
    for n, value in enumerate(prov.centre_keys):
        pem = _read_pem(value, boot_dir, f"centre_keys[{n}]", problems)
        if pem is None:
            continue
        try:
            trusted += [public_pem(k) for k in parse_public_keys(pem, f"centre_keys[{n}]")]
        except KeyFileError as exc:
            problems.append(f"centre_keys[{n}]: {exc.message}")
    if trusted:
        files[CENTRE_KEYS_FILE] = (b"".join(trusted), 0o644)

    if prov.board and prov.board != "auto":
        from guetteur.ops.hwprofile import available_profiles

        known = sorted(available_profiles())
        if prov.board not in known:
            problems.append(
                f"board: unknown board {prov.board!r}; known boards: {', '.join(known)}"
            )
        else:
            files[BOARD_FILE] = (f"{prov.board}\n".encode(), 0o644)

    key_path = etc_dir / KEY_FILE
    try:
        existing = key_path.read_bytes()
    except OSError:
        existing = None
    key, reused = load_or_create_key(existing)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    files[KEY_FILE] = (key_pem, 0o600)
    files[CSR_FILE] = (make_csr(key, prov.gateway_id, prov.site), 0o644)
    if prov.enrolment_token is not None and CERT_FILE not in files:
        token = {
            "token": prov.enrolment_token.get_secret_value(),
            "expires": iso_ms(time.time() + prov.enrolment_token_ttl_hours * 3600),
        }
        files[TOKEN_FILE] = (json.dumps(token).encode() + b"\n", 0o600)
    if secrets:
        files[SECRETS_FILE] = (yaml.safe_dump(secrets, allow_unicode=True).encode(), 0o600)

    mqtt: dict[str, Any] = {"url": prov.broker_url}
    if tls or CERT_FILE in files:
        if CERT_FILE in files:
            tls["cert_file"] = str(etc_dir / CERT_FILE)
            tls["key_file"] = str(key_path)
        mqtt["tls"] = tls
    config: dict[str, Any] = {
        "gateway_id": prov.gateway_id,
        "data_dir": data_dir,
        "mqtt": mqtt,
        "cameras": cameras,
    }
    if prov.site:
        config["site"] = prov.site
    if secrets:
        config["secrets_file"] = str(etc_dir / SECRETS_FILE)
    if trusted:
        config["commands"] = {"trusted_keys": [str(etc_dir / CENTRE_KEYS_FILE)]}
    # validated as the agent will see it: the secrets file's values in place of the references
    resolved = {k: v for k, v in config.items() if k != "secrets_file"}
    resolved["cameras"] = [
        {**c, "password": secrets.get(f"camera-{c['id']}", c.get("password"))}
        if "password" in c
        else c
        for c in cameras
    ]
    try:
        validate_config(resolved, "generated config")
    except ConfigError as exc:
        problems += [f"(generated config) {p}" for p in exc.problems]
    if problems:
        raise ProvisionError("provision.invalid", problems)
    header = (
        f"# Written by guetteur provision at {iso_ms()} from {PROVISION_FILE} on the boot "
        "partition.\n# Edit freely; `guetteur config check` validates it.\n"
    )
    config_yaml = header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    files[CONFIG_FILE] = (config_yaml.encode(), 0o640)
    return ProvisionPlan(prov, config_yaml, files, len(cameras), reused)


def _write_atomic(path: Path, content: bytes, mode: int, owner: tuple[int, int] | None) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)  # before any byte lands: the key is never world-readable
        if owner is not None:
            os.fchown(fd, *owner)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # FAT directories cannot always be fsynced
    finally:
        os.close(fd)


def resolve_owner(user: str | None) -> tuple[int, int] | None:
    if not user:
        return None
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise ProvisionError(
            "provision.user",
            [f"--owner: system user {user!r} does not exist (sysusers.d/guetteur.conf creates it)"],
        ) from None
    return pw.pw_uid, pw.pw_gid


@dataclass
class ProvisionResult:
    gateway_id: str
    config_path: Path
    key_path: Path
    csr_path: Path
    cameras: int
    key_reused: bool
    broker: BrokerProbe | None = None


ProbeFn = Callable[[str, bytes | None], BrokerProbe]


def apply_plan(
    plan: ProvisionPlan,
    boot_dir: Path,
    etc_dir: Path,
    state_dir: Path,
    owner: tuple[int, int] | None = None,
) -> ProvisionResult:
    """Commit a validated plan: /etc files, then the FAT clean-up, then the done marker."""
    etc_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    # The key first: a config pointing at a missing key would be worse than the reverse.
    order = [KEY_FILE, CSR_FILE, CA_FILE, CERT_FILE, TOKEN_FILE, SECRETS_FILE, CENTRE_KEYS_FILE]
    order += [BOARD_FILE, CONFIG_FILE]
    for name in order:
        if name in plan.files:
            content, mode = plan.files[name]
            _write_atomic(etc_dir / name, content, mode, owner)
    _fsync_dir(etc_dir)

    # The token leaves the FAT partition: the file is rewritten without it under a new name
    # (so the unit's ConditionPathExists no longer holds), then the original is removed.
    prov_path = boot_dir / PROVISION_FILE
    raw = _scrub_secrets(yaml.safe_load(prov_path.read_text(encoding="utf-8-sig")), etc_dir)
    applied = (
        "# Applied by guetteur provision at " + iso_ms() + ". To provision again, edit and "
        f"rename back to {PROVISION_FILE}.\n"
        + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)
    )
    _write_atomic(boot_dir / APPLIED_FILE, applied.encode(), 0o644, None)
    overwrite_and_unlink(prov_path)
    _fsync_dir(boot_dir)
    retire_enrolment_token(etc_dir)

    marker = {
        "gateway_id": plan.source.gateway_id,
        "time": iso_ms(),
        "cameras": plan.cameras,
        "key_reused": plan.key_reused,
    }
    _write_atomic(state_dir / DONE_MARKER, json.dumps(marker).encode() + b"\n", 0o644, None)
    return ProvisionResult(
        plan.source.gateway_id,
        etc_dir / CONFIG_FILE,
        etc_dir / KEY_FILE,
        etc_dir / CSR_FILE,
        plan.cameras,
        plan.key_reused,
    )


def _scrub_secrets(node: Any, etc_dir: Path) -> Any:
    """The provisioning tree with the token and every password replaced by a note."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "enrolment_token":
                out[k] = f"(removed at provisioning; kept in {etc_dir / TOKEN_FILE} until used)"
            elif k == "password":
                out[k] = f"(removed at provisioning; kept in {etc_dir / SECRETS_FILE})"
            else:
                out[k] = _scrub_secrets(v, etc_dir)
        return out
    if isinstance(node, list):
        return [_scrub_secrets(v, etc_dir) for v in node]
    return node


def provision(
    boot_dir: Path,
    etc_dir: Path,
    state_dir: Path,
    owner: str | None = None,
    data_dir: str | None = None,
    discover_cameras: DiscoverFn | None = None,
    probe: ProbeFn | None = None,
) -> ProvisionResult:
    """Validate everything (with ``probe``: the broker's certificate against the file's CA),
    then apply. Raises ProvisionError with nothing changed."""
    owner_ids = resolve_owner(owner)
    if data_dir is None:
        data_dir = _board_data_dir(boot_dir)
    plan = plan_provisioning(boot_dir, etc_dir, data_dir, discover_cameras)
    seen = None
    if probe is not None:
        seen = probe(plan.source.broker_url, plan.files.get(CA_FILE, (None, 0))[0])
        if seen.verdict == "certificate":
            raise ProvisionError("provision.broker_certificate", [seen.sentence])
        log.log(logging.WARNING if seen.verdict == "unreachable" else logging.INFO, seen.sentence)
    result = apply_plan(plan, boot_dir, etc_dir, state_dir, owner_ids)
    result.broker = seen
    return result


def _board_data_dir(boot_dir: Path) -> str:
    from guetteur.ops.hwprofile import ProfileError, detect_board

    try:
        raw = yaml.safe_load((boot_dir / PROVISION_FILE).read_text(encoding="utf-8-sig"))
        override = raw.get("board") if isinstance(raw, dict) else None
        return detect_board(
            override=override if isinstance(override, str) else None
        ).storage.data_dir
    except (OSError, yaml.YAMLError, ProfileError) as exc:
        log.warning("board profile unavailable (%s): data_dir /var/lib/guetteur", exc)
        return "/var/lib/guetteur"


def _discover_for_provisioning(creds: DiscoverCredentials | None) -> list[dict[str, Any]]:
    from guetteur.ops.discover import cameras_for_config, discover

    user = creds.username if creds else None
    password = creds.password.get_secret_value() if creds and creds.password else None
    found = discover(timeout_s=3.0, username=user, password=password)
    return cameras_for_config(found, user, password)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--boot",
        type=Path,
        default=Path("/boot/firmware"),
        help="boot (FAT) partition holding guetteur-provision.yaml",
    )
    parser.add_argument(
        "--etc",
        type=Path,
        default=Path("/etc/guetteur"),
        help="where the agent config, key and CSR are written",
    )
    parser.add_argument(
        "--state",
        type=Path,
        default=Path("/var/lib/guetteur"),
        help="where the done marker is written",
    )
    parser.add_argument(
        "--owner",
        default="guetteur",
        help="user owning the written files ('' keeps the current user)",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="data_dir written into the config (default: from the board profile)",
    )
    parser.add_argument(
        "--no-broker-check",
        action="store_true",
        help="do not connect to the broker to check its certificate against the CA",
    )
    parser.add_argument(
        "--no-discover",
        action="store_true",
        help="refuse cameras: discover instead of probing the LAN",
    )


def run(args: argparse.Namespace) -> int:
    boot: Path = args.boot
    if not (boot / PROVISION_FILE).exists():
        print(f"nothing to do: no {PROVISION_FILE} in {boot}")
        return 0
    try:
        result = provision(
            boot,
            args.etc,
            args.state,
            owner=args.owner or None,
            data_dir=args.data_dir,
            discover_cameras=None if args.no_discover else _discover_for_provisioning,
            probe=None if args.no_broker_check else probe_broker,
        )
    except ProvisionError as exc:
        print(exc.report())
        log.error("provisioning refused: %s", exc)
        _report_on_boot(boot, report_refused(exc.code, exc.problems))
        return 2
    except OSError as exc:  # a file that cannot be written: the technician still gets a report
        problem = f"{exc.filename or 'a file'}: cannot write: {exc.strerror or exc}"
        log.error("provisioning failed while writing: %s; it runs again at the next boot", problem)
        _report_on_boot(boot, report_refused("provision.write", [problem]))
        return 2
    probe = result.broker or BrokerProbe("not_checked", "broker not checked (--no-broker-check)")
    _report_on_boot(boot, report_applied(result.gateway_id, result.cameras, probe))
    print(
        f"provisioned gateway {result.gateway_id}: config {result.config_path}, "
        f"{result.cameras} camera(s), device key {result.key_path} "
        f"({'kept' if result.key_reused else 'new'}), CSR {result.csr_path}"
    )
    print("next: `guetteur doctor` checks cameras, broker, clock and disk")
    return 0


def _report_on_boot(boot: Path, text: str) -> None:
    """The report where the technician looks: the boot partition (the journal has it too)."""
    try:
        _write_atomic(boot / REPORT_FILE, text.encode("utf-8-sig"), 0o644, None)
    except OSError as exc:
        log.error("cannot write %s on %s (%s): see this journal", REPORT_FILE, boot, exc.strerror)
