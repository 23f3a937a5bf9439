"""The one ONVIF SOAP client: SOAP 1.2 envelopes, WS-Security UsernameToken (PasswordDigest),
HTTP POST with a timeout, SOAP faults and HTTP errors turned into one clear ``SoapError``, and
ElementTree helpers that match elements by local name.

A small synchronous client on the standard library rather than an ONVIF library
(onvif-zeep-async), on purpose: the PTZ driver is called from plain threads and onvif-zeep-async is
asyncio-only; we need a handful of operations out of hundreds; the WS-Security digest is ten
lines; and it adds no dependency (zeep + lxml + httpx) to the gateway image. Callers write the
body of each operation themselves (``<tptz:Stop>…``), with the prefixes of ``NS``, which every
envelope declares.

Responses are read by local name only, so cameras that differ in namespace prefixes still parse.
Service addresses (XAddr) that a camera reports are re-based onto the host:port the client was
given (``service_path``): cameras behind NAT or with a misconfigured network page often report an
address the gateway cannot reach.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

# Prefixes callers use in request bodies; every envelope declares all of them (wsse/wsu only in
# the security header).
NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "tds": "http://www.onvif.org/ver10/device/wsdl",
    "trt": "http://www.onvif.org/ver10/media/wsdl",
    "tptz": "http://www.onvif.org/ver20/ptz/wsdl",
    "tr2": "http://www.onvif.org/ver20/media/wsdl",
    "tt": "http://www.onvif.org/ver10/schema",
    "wsse": "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd",
    "wsu": "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd",
}
_HEADER_ONLY = ("wsse", "wsu")
_DIGEST = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
    "#PasswordDigest"
)
_B64 = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary"
)
DEFAULT_DEVICE_PATH = "/onvif/device_service"


# -- envelope and WS-Security ---------------------------------------------------------------------


def password_digest(nonce: bytes, created: str, password: str) -> str:
    """WS-Security UsernameToken profile 1.0: Base64(SHA-1(nonce + created + password))."""
    return base64.b64encode(
        hashlib.sha1(nonce + created.encode() + password.encode()).digest()
    ).decode()


def security_header(username: str, password: str) -> str:
    """A UsernameToken with a fresh nonce and the current UTC time (cameras check both)."""
    nonce = os.urandom(16)
    created = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return (
        f'<wsse:Security xmlns:wsse="{NS["wsse"]}" xmlns:wsu="{NS["wsu"]}">'
        "<wsse:UsernameToken>"
        f"<wsse:Username>{escape(username)}</wsse:Username>"
        f'<wsse:Password Type="{_DIGEST}">{password_digest(nonce, created, password)}'
        "</wsse:Password>"
        f'<wsse:Nonce EncodingType="{_B64}">{base64.b64encode(nonce).decode()}</wsse:Nonce>'
        f"<wsu:Created>{created}</wsu:Created>"
        "</wsse:UsernameToken></wsse:Security>"
    )


def envelope(body: str, username: str | None, password: str | None) -> bytes:
    """A SOAP 1.2 envelope around ``body``; a security header when ``username`` is set."""
    header = f"<s:Header>{security_header(username, password or '')}</s:Header>" if username else ""
    declared = " ".join(
        f'xmlns:{prefix}="{uri}"' for prefix, uri in NS.items() if prefix not in _HEADER_ONLY
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<s:Envelope {declared}>{header}<s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


# -- reading answers by local name ----------------------------------------------------------------


def local_name(tag: str) -> str:
    """``{namespace}Name`` → ``Name``."""
    return tag.rsplit("}", 1)[-1]


def named(root: ET.Element, name: str) -> Iterator[ET.Element]:
    """Every element under ``root`` (itself included) with local name ``name``, in document
    order."""
    return (el for el in root.iter() if local_name(el.tag) == name)


def find(root: ET.Element, *names: str) -> ET.Element | None:
    """First descendant whose local-name path ends with ``names`` (``find(r, "PTZ", "XAddr")``:
    the first XAddr under the first PTZ element that has one)."""
    for el in named(root, names[0]):
        if len(names) == 1:
            return el
        found = find(el, *names[1:])
        if found is not None:
            return found
    return None


def find_text(root: ET.Element, *names: str) -> str | None:
    """The stripped text of the first element ``find`` would give that has any text."""
    for el in named(root, names[0]):
        if len(names) == 1:
            if el.text and el.text.strip():
                return el.text.strip()
            continue
        text = find_text(el, *names[1:])
        if text is not None:
            return text
    return None


# -- errors ---------------------------------------------------------------------------------------

SoapErrorKind = Literal["timeout", "unreachable", "unauthorized", "fault", "unreadable"]


class SoapError(Exception):
    """A SOAP call that did not succeed; the message says where (host:port), which operation and
    why. ``kind`` says what a caller can do about it:

    - ``timeout``: the device did not answer within the timeout;
    - ``unreachable``: no connection (refused, no route, reset);
    - ``unauthorized``: credentials missing or refused (HTTP 401/403 or an ONVIF NotAuthorized
      fault);
    - ``fault``: the device refused the operation (SOAP fault or another HTTP error);
    - ``unreadable``: the answer is not a SOAP envelope.
    """

    def __init__(
        self,
        kind: SoapErrorKind,
        message: str,
        *,
        where: str,
        operation: str,
        status: int | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.where = where
        self.operation = operation
        self.status = status
        self.reason = reason


def _fault(root: ET.Element) -> tuple[str | None, bool] | None:
    """(reason text, is NotAuthorized) of a SOAP fault, None when ``root`` holds no fault."""
    fault = find(root, "Fault")
    if fault is None:
        return None
    reason = find_text(fault, "Reason", "Text") or find_text(fault, "Text")
    codes = [el.text or "" for el in named(fault, "Value")]
    return reason, any(code.strip().endswith("NotAuthorized") for code in codes)


# -- the client -----------------------------------------------------------------------------------


class SoapClient:
    """One ONVIF device reached at ``url`` (its device service, ``http(s)://HOST[:PORT]/PATH``).

    ``call`` POSTs one operation to one of its services and returns the parsed answer, or raises
    ``SoapError``. Stateless between calls (a connection per call): safe from several threads.
    Raises ValueError for a URL that is not http(s)://HOST."""

    def __init__(
        self,
        url: str,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 3.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"ONVIF url {url!r} is not http(s)://HOST")
        self.url = url
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.device_path = parts.path or DEFAULT_DEVICE_PATH
        self.username = username
        self.password = password
        self.timeout_s = timeout_s

    @property
    def where(self) -> str:
        """``host:port``: what a technician checks."""
        return f"{self.host}:{self.port}"

    def service_path(self, xaddr: str | None) -> str:
        """The path of a service address the device reported, to be reached on our host:port;
        the device service's own path when the device reported none."""
        if not xaddr:
            return self.device_path
        return urlsplit(xaddr.strip()).path or self.device_path

    def call(self, action: str, body: str, path: str | None = None) -> ET.Element:
        """POST ``body`` (one operation element) to the service at ``path`` (default: the device
        service) with SOAP action ``action`` (``f"{NS['tptz']}/Stop"``); the parsed envelope of
        a successful answer."""
        operation = action.rsplit("/", 1)[-1]
        where = self.where

        def error(
            kind: SoapErrorKind, message: str, status: int | None = None, reason: str | None = None
        ) -> SoapError:
            return SoapError(
                kind, message, where=where, operation=operation, status=status, reason=reason
            )

        conn_cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        conn = conn_cls(self.host, self.port, timeout=self.timeout_s)
        try:
            conn.request(
                "POST",
                path or self.device_path,
                body=envelope(body, self.username, self.password),
                headers={
                    "Content-Type": f'application/soap+xml; charset=utf-8; action="{action}"',
                    "SOAPAction": action,
                },
            )
            resp = conn.getresponse()
            data = resp.read()
        except TimeoutError:
            raise error(
                "timeout", f"{where} did not answer {operation} within {self.timeout_s:g} s"
            ) from None
        except OSError as exc:
            raise error("unreachable", f"{where} unreachable: {exc}") from None
        except http.client.HTTPException as exc:
            raise error(
                "unreadable", f"{where} did not answer {operation} over HTTP ({exc!r})"
            ) from None
        finally:
            conn.close()
        status = resp.status
        denied = status in (401, 403)
        try:
            root = ET.fromstring(data)
        except ET.ParseError as exc:
            if status >= 400:  # an HTTP error page, not a SOAP fault
                kind: SoapErrorKind = "unauthorized" if denied else "fault"
                raise error(
                    kind, f"{where} refused {operation}: HTTP {status}", status=status
                ) from None
            raise error(
                "unreadable",
                f"{where} sent an unreadable answer to {operation} (HTTP {status}): {exc}",
                status=status,
            ) from None
        fault = _fault(root)
        if fault is not None or status >= 400:
            reason, not_authorized = fault if fault is not None else (None, False)
            raise error(
                "unauthorized" if denied or not_authorized else "fault",
                f"{where} refused {operation}: {reason or f'HTTP {status}'}",
                status=status,
                reason=reason,
            )
        return root
