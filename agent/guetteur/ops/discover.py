"""``guetteur discover``: find ONVIF cameras on the LAN and list their RTSP URIs and PTZ support.

1. WS-Discovery: a SOAP-over-UDP ``Probe`` for ``dn:NetworkVideoTransmitter`` sent to the
   multicast group 239.255.255.250:3702 (or to one address with ``--target``); cameras answer
   with ``ProbeMatch`` messages carrying their device-service addresses (XAddrs).
2. For each camera: ``GetCapabilities`` (media and PTZ service addresses), ``GetProfiles``
   (encoding, resolution) and ``GetStreamUri`` per profile, over the SOAP client the ONVIF PTZ
   driver uses too (:mod:`guetteur.onvif.soap`), with WS-Security digest when credentials are
   given. Most cameras answer GetCapabilities without credentials and the rest only with.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import socket
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import unquote
from xml.sax.saxutils import escape

import yaml

from guetteur.onvif.device import get_services
from guetteur.onvif.soap import NS, SoapClient, SoapError, find_text, local_name, named

log = logging.getLogger(__name__)

MULTICAST = ("239.255.255.250", 3702)
WSD_NS = "http://schemas.xmlsoap.org/ws/2005/04/discovery"
WSA_NS = "http://schemas.xmlsoap.org/ws/2004/08/addressing"


def probe_message(message_id: str | None = None) -> bytes:
    mid = message_id or f"uuid:{uuid.uuid4()}"
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<s:Envelope xmlns:s="{NS["s"]}" xmlns:a="{WSA_NS}" xmlns:d="{WSD_NS}" '
        'xmlns:dn="http://www.onvif.org/ver10/network/wsdl">'
        "<s:Header>"
        f"<a:Action>{WSD_NS}/Probe</a:Action>"
        f"<a:MessageID>{mid}</a:MessageID>"
        "<a:To>urn:schemas-xmlsoap-org:ws:2005:04:discovery</a:To>"
        "</s:Header>"
        "<s:Body><d:Probe><d:Types>dn:NetworkVideoTransmitter</d:Types></d:Probe></s:Body>"
        "</s:Envelope>"
    ).encode()


@dataclass
class ProbeMatch:
    endpoint: str
    xaddrs: list[str]
    scopes: list[str]
    relates_to: str | None = None

    def scope(self, kind: str) -> str | None:
        """The value of an ``onvif://www.onvif.org/<kind>/<value>`` scope (URL-decoded)."""
        prefix = f"onvif://www.onvif.org/{kind}/"
        for s in self.scopes:
            if s.startswith(prefix):
                return unquote(s[len(prefix) :])
        return None


def parse_probe_matches(data: bytes) -> list[ProbeMatch]:
    """Pure: the ProbeMatch entries of one datagram (empty for anything else)."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError:
        return []
    relates = next((el.text for el in named(root, "RelatesTo")), None)
    out = []
    for pm in named(root, "ProbeMatch"):
        endpoint, xaddrs, scopes = "", [], []
        for el in pm.iter():
            name = local_name(el.tag)
            if name == "Address" and el.text:
                endpoint = el.text.strip()
            elif name == "XAddrs" and el.text:
                xaddrs = el.text.split()
            elif name == "Scopes" and el.text:
                scopes = el.text.split()
        if xaddrs:
            out.append(ProbeMatch(endpoint or xaddrs[0], xaddrs, scopes, relates))
    return out


def probe(
    target: tuple[str, int] = MULTICAST, timeout_s: float = 3.0, interface: str | None = None
) -> list[ProbeMatch]:
    """Send one Probe and collect answers for ``timeout_s``. De-duplicated by endpoint."""
    mid = f"uuid:{uuid.uuid4()}"
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        if target == MULTICAST:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)  # stay on the LAN
            if interface:
                sock.setsockopt(
                    socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface)
                )
        sock.bind((interface or "", 0))
        msg = probe_message(mid)
        sock.sendto(msg, target)
        found: dict[str, ProbeMatch] = {}
        deadline = time.monotonic() + timeout_s
        resent = False
        while (left := deadline - time.monotonic()) > 0:
            if not resent and left < timeout_s / 2:
                sock.sendto(msg, target)  # UDP: one repeat, as WS-Discovery recommends
                resent = True
            sock.settimeout(min(left, timeout_s / 2))
            try:
                data, _ = sock.recvfrom(65535)
            except TimeoutError:
                continue
            for m in parse_probe_matches(data):
                if m.relates_to in (None, mid):
                    found.setdefault(m.endpoint, m)
        return list(found.values())
    finally:
        sock.close()


@dataclass
class StreamProfile:
    token: str
    name: str | None
    encoding: str | None
    width: int | None
    height: int | None
    uri: str | None


@dataclass
class DiscoveredCamera:
    xaddr: str
    endpoint: str
    name: str | None
    hardware: str | None
    has_ptz: bool | None = None
    profiles: list[StreamProfile] = field(default_factory=list)
    error: str | None = None


def describe(
    match: ProbeMatch,
    username: str | None = None,
    password: str | None = None,
    timeout_s: float = 3.0,
) -> DiscoveredCamera:
    """Ask one camera for its services, profiles and stream URIs. Errors go in ``.error``."""
    xaddr = next((x for x in match.xaddrs if x.startswith("http")), match.xaddrs[0])
    cam = DiscoveredCamera(xaddr, match.endpoint, match.scope("name"), match.scope("hardware"))
    try:
        client = SoapClient(xaddr, username, password, timeout_s)
        services = get_services(client)
        cam.has_ptz = services.ptz is not None
        media = client.service_path(services.media)
        profiles = client.call(f"{NS['trt']}/GetProfiles", "<trt:GetProfiles/>", media)
        for prof in named(profiles, "Profiles"):
            token = prof.get("token") or ""
            enc = next(named(prof, "VideoEncoderConfiguration"), None)
            width = height = None
            encoding = None
            if enc is not None:
                encoding = find_text(enc, "Encoding")
                w, h = find_text(enc, "Width"), find_text(enc, "Height")
                width = int(w) if w and w.isdigit() else None
                height = int(h) if h and h.isdigit() else None
            uri = None
            try:
                su = client.call(
                    f"{NS['trt']}/GetStreamUri",
                    "<trt:GetStreamUri><trt:StreamSetup><tt:Stream>RTP-Unicast</tt:Stream>"
                    "<tt:Transport><tt:Protocol>RTSP</tt:Protocol></tt:Transport>"
                    f"</trt:StreamSetup><trt:ProfileToken>{escape(token)}</trt:ProfileToken>"
                    "</trt:GetStreamUri>",
                    media,
                )
                uri = find_text(su, "Uri")
            except SoapError as exc:
                log.warning("camera %s profile %s: no stream URI: %s", xaddr, token, exc)
            cam.profiles.append(
                StreamProfile(token, find_text(prof, "Name"), encoding, width, height, uri)
            )
    except ValueError as exc:  # an XAddr that is not http(s)://HOST
        cam.error = str(exc)
    except SoapError as exc:
        cam.error = _sentence(exc, username)
    return cam


def _sentence(exc: SoapError, username: str | None) -> str:
    """The error with what to do about it, for the technician reading the table."""
    if exc.kind == "unauthorized":
        return f"{exc.message}: {'check' if username else 'give'} --username/--password"
    return exc.message


def discover(
    target: tuple[str, int] = MULTICAST,
    timeout_s: float = 3.0,
    username: str | None = None,
    password: str | None = None,
    interface: str | None = None,
) -> list[DiscoveredCamera]:
    return [describe(m, username, password, timeout_s) for m in probe(target, timeout_s, interface)]


def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-_")[:48]
    return s if s and s[0].isalnum() else ""


def cameras_for_config(
    found: list[DiscoveredCamera], username: str | None = None, password: str | None = None
) -> list[dict[str, Any]]:
    """Config ``cameras:`` entries: main profile as ``url``, the next as ``sub_url``."""
    out: list[dict[str, Any]] = []
    used: set[str] = set()
    for i, cam in enumerate(found, start=1):
        uris = [p.uri for p in cam.profiles if p.uri and p.uri.startswith(("rtsp://", "rtsps://"))]
        if not uris:
            continue
        cid = _slug(cam.name or "") or f"cam{i}"
        while cid in used:
            cid = f"{cid}-{i}"
        used.add(cid)
        entry: dict[str, Any] = {"id": cid, "url": uris[0]}
        if len(uris) > 1:
            entry["sub_url"] = uris[1]
        if username:
            entry["username"] = username
            if password is not None:
                entry["password"] = password
        if cam.has_ptz:
            ptz: dict[str, Any] = {"protocol": "onvif", "url": cam.xaddr}
            if username:
                ptz["username"] = username
                if password is not None:
                    ptz["password"] = password
            entry["ptz"] = ptz
        out.append(entry)
    return out


def format_table(found: list[DiscoveredCamera]) -> str:
    if not found:
        return (
            "no ONVIF camera answered. Check the cameras are powered, on this LAN segment, "
            "and have ONVIF discovery enabled."
        )
    lines = []
    for cam in found:
        head = f"{cam.name or '(no name)'}  {cam.hardware or ''}  {cam.xaddr}"
        ptz = {True: "PTZ: yes", False: "PTZ: no", None: "PTZ: ?"}[cam.has_ptz]
        lines.append(f"{head}  {ptz}")
        if cam.error:
            lines.append(f"    error: {cam.error}")
        for p in cam.profiles:
            res = f"{p.width}x{p.height}" if p.width and p.height else "?"
            lines.append(
                f"    {p.name or p.token}: {p.encoding or '?'} {res}  {p.uri or '(no uri)'}"
            )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for answers")
    parser.add_argument("--target", help="probe one HOST:PORT by unicast instead of multicast")
    parser.add_argument("--interface", help="local IPv4 address to send the multicast probe from")
    parser.add_argument("--username", help="ONVIF user (for GetStreamUri on most cameras)")
    parser.add_argument(
        "--password-env",
        default="ONVIF_PASSWORD",
        help="environment variable holding the ONVIF password",
    )
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON")
    out.add_argument("--config", action="store_true", help="print a `cameras:` config snippet")


def run(args: argparse.Namespace) -> int:
    target = MULTICAST
    if args.target:
        host, _, port = args.target.rpartition(":")
        if not host or not port.isdigit():
            print(f"--target {args.target!r}: expected HOST:PORT")
            return 2
        target = (host, int(port))
    password = os.environ.get(args.password_env) if args.username else None
    try:
        found = discover(target, args.timeout, args.username, password, args.interface)
    except OSError as exc:
        print(f"cannot send the discovery probe: {exc} (is the network up?)")
        return 1
    if args.json:
        print(json.dumps([asdict(c) for c in found], indent=2))
    elif args.config:
        print(
            yaml.safe_dump(
                {"cameras": cameras_for_config(found, args.username, password)}, sort_keys=False
            ),
            end="",
        )
    else:
        print(format_table(found))
    return 0 if found else 1
