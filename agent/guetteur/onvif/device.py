"""Device-service calls that the PTZ driver and discovery share: which services a camera offers,
and where (GetCapabilities)."""

from __future__ import annotations

from dataclasses import dataclass

from guetteur.onvif.soap import NS, SoapClient, find_text


@dataclass(frozen=True)
class Services:
    """Service addresses (XAddr) as the camera reports them; None: the camera has no such
    service. Reach them with ``SoapClient.service_path``."""

    media: str | None
    ptz: str | None


def get_services(client: SoapClient) -> Services:
    """GetCapabilities (category All). Most cameras answer it without credentials, the rest only
    with. Raises SoapError."""
    root = client.call(
        f"{NS['tds']}/GetCapabilities",
        "<tds:GetCapabilities><tds:Category>All</tds:Category></tds:GetCapabilities>",
    )
    return Services(media=find_text(root, "Media", "XAddr"), ptz=find_text(root, "PTZ", "XAddr"))
