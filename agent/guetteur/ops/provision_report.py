"""What provisioning tells the technician where they look: a report written back to the boot (FAT)
partition, ``guetteur-provision.report.txt``, readable on any laptop the card is put into; and the
probe of the centre's broker that catches a wrong CA certificate before it is applied.

A box given a CA that does not sign its broker's certificate would boot, provision and then
never come online, and the technician would have left. So provisioning connects to the broker
once (TLS handshake against the file's CA): a certificate the CA does not verify refuses the
file (nothing applied, the file stays, the report says why and what to do); a broker that cannot
be reached yet is only reported, because the link may come later and the agent keeps retrying.
"""

from __future__ import annotations

import errno
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from guetteur.timeutil import iso_ms

REPORT_FILE = "guetteur-provision.report.txt"


@dataclass(frozen=True)
class BrokerProbe:
    """``verdict``: ``ok``, ``certificate`` (refused: the CA does not verify the broker),
    ``unreachable`` (reported, not refused) or ``not_checked``; ``sentence`` says what was seen."""

    verdict: str
    sentence: str


def probe_broker(url: str, ca_pem: bytes | None, timeout_s: float = 8.0) -> BrokerProbe:
    """One TCP connection (and TLS handshake for mqtts://) to the broker; never raises."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    tls = parts.scheme == "mqtts"
    port = parts.port or (8883 if tls else 1883)
    where = f"{host}:{port}"
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except PermissionError:
        # the provisioning unit may only reach private addresses (IPAddressAllow=)
        return BrokerProbe("not_checked", f"broker {where} not checked from provisioning")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if isinstance(exc, TimeoutError) or exc.errno == errno.ETIMEDOUT:
            reason = f"no answer within {timeout_s:.0f} s"
        return BrokerProbe("unreachable", f"broker {where} unreachable now ({reason})")
    with sock:
        if not tls:
            return BrokerProbe("ok", f"broker {where} reachable (plain MQTT)")
        ctx = ssl.create_default_context()
        if ca_pem is not None:
            ctx = ssl.create_default_context(cadata=ca_pem.decode("ascii", "replace"))
        try:
            with ctx.wrap_socket(sock, server_hostname=host):
                pass
        except ssl.SSLCertVerificationError as exc:
            return BrokerProbe(
                "certificate",
                f"ca_certificate: the broker {where} presented a certificate this CA does not "
                f"verify ({exc.verify_message}); ask the centre for its current CA certificate",
            )
        except (OSError, ssl.SSLError) as exc:
            return BrokerProbe("unreachable", f"broker {where}: TLS handshake failed ({exc})")
    return BrokerProbe("ok", f"broker {where} reachable, its certificate verified by the CA")


def report_refused(code: str, problems: list[str]) -> str:
    head = [
        "RÉSULTAT : REFUSÉ. Rien n'a été modifié sur la passerelle.",
        "  Corrigez guetteur-provision.yaml sur cette partition, puis redémarrez la passerelle.",
        "RESULT: REFUSED. Nothing was changed on the gateway.",
        "  Fix guetteur-provision.yaml on this partition, then restart the gateway.",
        "",
        f"Problèmes / problems ({code}):",
    ]
    return _report(head + [f"  - {p}" for p in problems])


def report_applied(gateway_id: str, cameras: int, probe: BrokerProbe) -> str:
    lines = [
        f"RÉSULTAT : APPLIQUÉ. Passerelle {gateway_id}, {cameras} caméra(s).",
        f"RESULT: APPLIED. Gateway {gateway_id}, {cameras} camera(s).",
        "",
        f"Centre : {probe.sentence}",
    ]
    if probe.verdict == "unreachable":
        lines += [
            "  La passerelle réessaie seule ; vérifiez l'adresse du broker, le réseau, le pare-feu.",
            "  The gateway keeps retrying; check the broker address, the network, the firewall.",
        ]
    return _report(lines)


def _report(lines: list[str]) -> str:
    """CRLF and a BOM: Windows' Notepad is what technicians open it with."""
    title = ["Guetteur : rapport de provisionnement / provisioning report", iso_ms(), ""]
    return "\r\n".join(title + lines) + "\r\n"
