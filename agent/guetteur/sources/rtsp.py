"""RTSP/RTSPS IP cameras, read through PyAV (the reconnect loop is ``ContainerSource``'s)."""

from __future__ import annotations

from guetteur.sources.container import ContainerSource, OpenTarget, Role
from guetteur.sources.status import where


class RtspSource(ContainerSource):
    """An IP camera over RTSP (or RTSP over TLS), RTP interleaved in the TCP connection."""

    def target(self, role: Role, long_probe: bool = False) -> OpenTarget:
        cam = self.camera
        url = cam.stream_url(sub=role.sub)
        read_s = min(cam.read_timeout_s, cam.stall_timeout_s)
        options = {
            "rtsp_transport": "tcp",  # no UDP: works through NAT/firewalls, no lost packets
            # FFmpeg socket I/O timeout (µs): connect, handshake and every read
            "timeout": str(int(read_s * 1_000_000)),
            # 0.2 s of probing instead of ~1 s: cameras announce SPS/PPS in the SDP
            "analyzeduration": "2000000" if long_probe else "200000",
            "probesize": "5000000" if long_probe else "500000",
        }
        return OpenTarget(
            url=url,
            display=where(url),
            options=options,
            # PyAV's own watchdog: aborts a blocking open/read, so a hung camera never hangs us
            timeout=(cam.open_timeout_s, cam.stall_timeout_s),
        )
