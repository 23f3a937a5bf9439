"""Doctor's broker check: the device certificate's expiry, then one real MQTT 5 connection set up
exactly as the agent's link sets up its own (:func:`guetteur.uplink.mqttutil.configure_client`:
credentials from the config or the URL, TLS): TCP, TLS handshake (the broker certificate's trust
and expiry), CONNACK.

Doctor connects with its own client id, never the agent's: a second connection with the agent's
id would take over the running agent's session and disconnect it.
"""

from __future__ import annotations

import datetime as dt
import ssl
import threading
import uuid
from pathlib import Path
from typing import Any

from guetteur.config import GuetteurConfig
from guetteur.ops.checks.report import Check
from guetteur.uplink.mqttutil import configure_client, new_client, parse_broker_url, uses_tls

CERT_WARN_DAYS = 30


def _cert_expiry(cert_der: bytes) -> dt.datetime:
    from cryptography import x509

    return x509.load_der_x509_certificate(cert_der).not_valid_after_utc


def check_cert_file(path: str, what: str, now: dt.datetime | None = None) -> Check:
    from cryptography import x509

    now = now or dt.datetime.now(dt.UTC)
    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except OSError as exc:
        return Check(
            "certificate",
            what,
            "FAIL",
            f"{path}: cannot read: {exc.strerror}",
            "re-provision, or put the certificate back",
        )
    except ValueError:
        return Check(
            "certificate",
            what,
            "FAIL",
            f"{path}: not a PEM certificate",
            "replace it with the PEM file from the centre",
        )
    return _expiry_check("certificate", what, f"{path}", cert.not_valid_after_utc, now)


def _expiry_check(
    check: str, subject: str, where: str, not_after: dt.datetime, now: dt.datetime
) -> Check:
    days = (not_after - now).total_seconds() / 86400
    text = f"{where}: expires {not_after:%Y-%m-%d} ({days:.0f} days)"
    if days <= 0:
        return Check(
            check,
            subject,
            "FAIL",
            f"{where}: EXPIRED on {not_after:%Y-%m-%d}",
            "ask the centre for a new certificate; the link cannot come up",
        )
    if days < CERT_WARN_DAYS:
        return Check(check, subject, "WARN", text, "renew it before it expires")
    return Check(check, subject, "PASS", text)


def check_broker(config: GuetteurConfig, timeout_s: float = 5.0) -> list[Check]:
    mq = config.mqtt
    address = parse_broker_url(mq.url)  # the config validated it
    where = f"{address.host}:{address.port}"
    out: list[Check] = []
    if mq.tls and mq.tls.cert_file:
        out.append(check_cert_file(mq.tls.cert_file, "device certificate"))
    client = new_client(f"guetteur-doctor-{config.gateway_id}-{uuid.uuid4().hex[:6]}")
    try:
        configure_client(client, mq, address)
    except (OSError, ssl.SSLError) as exc:
        out.append(
            Check(
                "broker",
                where,
                "FAIL",
                f"TLS files cannot be used: {exc}",
                "check mqtt.tls.ca_file, cert_file and key_file: PEM files the guetteur user "
                "can read",
            )
        )
        return out
    tls = uses_tls(mq, address)
    client.connect_timeout = timeout_s
    done = threading.Event()
    result: dict[str, Any] = {}

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        result["reason"] = reason
        done.set()

    def on_disconnect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        result.setdefault("reason", reason)
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    try:
        client.connect(address.host, address.port, keepalive=10)
    except ssl.SSLCertVerificationError as exc:
        msg = exc.verify_message or str(exc)
        action = (
            "the broker's certificate has expired: the centre must renew it"
            if "expired" in msg
            else "check mqtt.tls.ca_file is the centre's CA and the broker host name"
        )
        out.append(Check("broker", where, "FAIL", f"TLS: certificate not trusted ({msg})", action))
        return out
    except ssl.SSLError as exc:
        out.append(
            Check(
                "broker",
                where,
                "FAIL",
                f"TLS handshake failed: {exc}",
                "check the port is the broker's TLS port and the client certificate",
            )
        )
        return out
    except OSError as exc:
        out.append(
            Check(
                "broker",
                where,
                "FAIL",
                f"cannot connect: {exc.strerror or exc}",
                "check the network/4G link, the broker address and port, and firewalls",
            )
        )
        return out
    try:
        version = None
        sock = client.socket()
        if tls and isinstance(sock, ssl.SSLSocket):
            version = sock.version()
            der = sock.getpeercert(binary_form=True)
            if der:
                out.append(
                    _expiry_check(
                        "broker-certificate",
                        where,
                        "broker certificate",
                        _cert_expiry(der),
                        dt.datetime.now(dt.UTC),
                    )
                )
        client.loop_start()
        refused = None
        if not done.wait(timeout_s):
            refused = f"no CONNACK within {timeout_s:g} s"
        elif getattr(result.get("reason"), "is_failure", False):
            refused = str(result["reason"])
    finally:
        client.disconnect()
        client.loop_stop()
    if refused is not None:
        out.append(
            Check(
                "broker",
                where,
                "FAIL",
                f"MQTT connect refused: {refused}",
                "check mqtt.username/password (or the user:password in mqtt.url) or the device "
                "certificate with the centre",
            )
        )
    elif tls:
        out.append(Check("broker", where, "PASS", f"MQTT over {version} accepted the connection"))
    else:
        out.append(
            Check(
                "broker",
                where,
                "WARN",
                "MQTT accepted the connection, but without TLS",
                "use mqtts:// with the centre's CA outside a lab bench",
            )
        )
    return out
