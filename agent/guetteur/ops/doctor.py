"""``guetteur doctor``: is this gateway ready to work? One verdict per line, and what to do.

Checks: config valid; each camera reachable (codec, resolution, fps); broker reachable (TLS and
the certificates' expiry, then a real MQTT CONNECT); clock synchronised; data dir free space and
sequential write speed; permissions (data dir, device key, serial and video devices); hardware
watchdog present.

Exit code: 0 when no line is FAIL (WARN lines are advice), 1 when any line is FAIL, 2 when the
config cannot be read at all. ``--strict`` also fails on WARN. ``--json`` prints the same report
for machines.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import socket
import ssl
import stat
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from guetteur.config import CameraConfig, ConfigError, GuetteurConfig, load_config, redact_url
from guetteur.timeutil import clock_synchronised, iso_ms

Verdict = Literal["PASS", "WARN", "FAIL"]
CERT_WARN_DAYS = 30
MIN_WRITE_MB_S = 2.0  # below this even one 4 Mbit/s camera with retention churn falls behind
CAMERA_MB_S = 0.5  # a typical 1080p H.264 main stream (4 Mbit/s)


@dataclass
class Check:
    check: str
    subject: str
    verdict: Verdict
    detail: str
    action: str = ""


# ----------------------------------------------------------------------------------- config


def check_config(path: Path) -> tuple[Check, GuetteurConfig | None]:
    try:
        config = load_config(path)
    except ConfigError as exc:
        return Check(
            "config",
            str(path),
            "FAIL",
            "; ".join(exc.problems),
            f"fix these keys in {path} (`guetteur config check` lists them)",
        ), None
    cams = [c for c in config.cameras if c.enabled]
    detail = f"valid: gateway {config.gateway_id}, {len(cams)} camera(s)"
    if not cams:
        return Check(
            "config", str(path), "WARN", detail, "add cameras (or run `guetteur discover --config`)"
        ), config
    return Check("config", str(path), "PASS", detail), config


# ---------------------------------------------------------------------------------- cameras


def probe_camera(cam: CameraConfig, timeout_s: float = 5.0, sample_s: float = 2.0) -> Check:
    """Open the camera with PyAV (short timeouts), read packets for ``sample_s``: codec,
    resolution and the frame rate measured from packet timestamps."""
    import av

    url = cam.stream_url()
    shown = redact_url(url)
    if url.startswith("test:"):
        return Check("camera", cam.id, "PASS", f"{shown}: synthetic test pattern (no device)")
    if url.startswith("picamera2:"):
        return Check(
            "camera",
            cam.id,
            "WARN",
            f"{shown}: Pi camera not probed by doctor",
            "check `rpicam-hello --list-cameras`",
        )
    target = url.removeprefix("file:") if url.startswith("file:") else url
    options = {"analyzeduration": "500000", "probesize": "1000000"}
    if url.startswith(("rtsp://", "rtsps://")):
        options |= {"rtsp_transport": "tcp", "timeout": str(int(timeout_s * 1_000_000))}
    fmt = "video4linux2" if url.startswith("v4l2:") else None
    if fmt:
        target = url.removeprefix("v4l2:")
    started = time.monotonic()
    try:
        container = av.open(target, format=fmt, options=options, timeout=(timeout_s, timeout_s))
    except (av.error.FFmpegError, OSError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        return Check(
            "camera", cam.id, "FAIL", f"{shown}: cannot open: {reason}", _camera_action(exc)
        )
    try:
        opened_s = time.monotonic() - started
        vstreams = list(container.streams.video)
        if not vstreams:
            return Check(
                "camera",
                cam.id,
                "FAIL",
                f"{shown}: no video stream",
                "select a video profile/stream on the camera",
            )
        vs = vstreams[0]
        ctx = vs.codec_context
        codec, width, height = ctx.name, ctx.width, ctx.height
        first: float | None = None
        last: float | None = None
        count = 0  # packets with a timestamp (the fps estimate)
        packets = 0  # every video packet (the first ones from some servers carry no pts/dts)
        keyframe = False
        # Up to timeout_s for the first packet (a loaded box or a slow camera), then sample_s.
        deadline = time.monotonic() + timeout_s
        for pkt in container.demux(vs):
            if pkt.size == 0:
                continue
            if packets == 0:
                deadline = time.monotonic() + sample_s
            packets += 1
            ts = pkt.pts if pkt.pts is not None else pkt.dts
            if ts is not None and pkt.time_base is not None:
                t = float(ts * pkt.time_base)
                first = t if first is None else min(first, t)
                last = t if last is None else max(last, t)
                count += 1
            keyframe = keyframe or pkt.is_keyframe
            if time.monotonic() >= deadline or count >= 150:
                break
        fps = (count - 1) / (last - first) if first is not None and last and last > first else None
        if fps is None and vs.average_rate:
            fps = float(vs.average_rate)
    except (av.error.FFmpegError, OSError) as exc:
        return Check(
            "camera",
            cam.id,
            "FAIL",
            f"{shown}: opened but reading failed: {exc}",
            "check the camera's stream settings and the network between camera and gateway",
        )
    finally:
        container.close()
    res = f"{width}x{height}" if width and height else "resolution unknown"
    fps_text = f"{fps:.1f} fps" if fps else "fps unknown"
    detail = f"{shown}: {codec} {res} {fps_text}, opened in {opened_s:.1f} s"
    if packets == 0:
        return Check(
            "camera",
            cam.id,
            "FAIL",
            f"{shown}: opened but no video packet within {timeout_s:g} s",
            "the camera accepts connections but sends nothing: reboot it",
        )
    if codec not in ("h264", "hevc"):
        return Check(
            "camera",
            cam.id,
            "WARN",
            detail,
            "set the camera to H.264 (or H.265): other codecs cost CPU and storage",
        )
    if not keyframe:
        return Check(
            "camera",
            cam.id,
            "WARN",
            detail + ", no keyframe seen",
            "set the camera's GOP/I-frame interval to 1-2 s",
        )
    return Check("camera", cam.id, "PASS", detail)


def _camera_action(exc: Exception) -> str:
    text = str(exc).lower()
    if "401" in text or "unauthorized" in text or "authorization" in text:
        return "check the camera's username/password in the config"
    if "404" in text or "not found" in text:
        return "check the stream path of the URL (see `guetteur discover`)"
    if "refused" in text:
        return (
            "the camera answers but not on this port: check the RTSP port and that RTSP is enabled"
        )
    return (
        "check the camera is powered, its cable, its IP address, and that the gateway can reach it"
    )


# ----------------------------------------------------------------------------------- broker


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
    parts = urlsplit(mq.url)
    host = parts.hostname or ""
    tls = parts.scheme in ("mqtts", "ssl")
    port = parts.port or (8883 if tls else 1883)
    where = f"{host}:{port}"
    out: list[Check] = []
    if mq.tls and mq.tls.cert_file:
        out.append(check_cert_file(mq.tls.cert_file, "device certificate"))
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
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
    expiry_check: Check | None = None
    try:
        if tls:
            ctx = _tls_context(config)
            try:
                server_name = getattr(mq.tls, "server_name", None) or host
                with ctx.wrap_socket(sock, server_hostname=server_name) as tsock:
                    der = tsock.getpeercert(binary_form=True)
                    version = tsock.version()
                    if der:
                        expiry_check = _expiry_check(
                            "broker-certificate",
                            where,
                            "broker certificate",
                            _cert_expiry(der),
                            dt.datetime.now(dt.UTC),
                        )
            except ssl.SSLCertVerificationError as exc:
                msg = exc.verify_message or str(exc)
                action = (
                    "the broker's certificate has expired: the centre must renew it"
                    if "expired" in msg
                    else "check mqtt.tls.ca_file is the centre's CA and the broker host name"
                )
                out.append(
                    Check("broker", where, "FAIL", f"TLS: certificate not trusted ({msg})", action)
                )
                return out
            except (ssl.SSLError, OSError) as exc:
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
        else:
            sock.close()
    finally:
        sock.close()
    if expiry_check is not None:
        out.append(expiry_check)
    connack = _mqtt_connect(config, host, port, tls, timeout_s)
    if connack is not None:
        out.append(
            Check(
                "broker",
                where,
                "FAIL",
                f"MQTT connect refused: {connack}",
                "check mqtt.username/password or the device certificate with the centre",
            )
        )
        return out
    if tls:
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


def _tls_context(config: GuetteurConfig) -> ssl.SSLContext:
    t = config.mqtt.tls
    ctx = ssl.create_default_context(cafile=t.ca_file if t and t.ca_file else None)
    if t and t.cert_file:
        ctx.load_cert_chain(t.cert_file, t.key_file)
    return ctx


def _mqtt_connect(
    config: GuetteurConfig, host: str, port: int, tls: bool, timeout_s: float
) -> str | None:
    """A real MQTT 5 CONNECT with the agent's credentials. None when accepted, else why not."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    done = threading.Event()
    result: dict[str, Any] = {}

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        result["reason"] = reason
        done.set()

    def on_disconnect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        result.setdefault("reason", reason)
        done.set()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"guetteur-doctor-{config.gateway_id}-{uuid.uuid4().hex[:6]}",
        protocol=mqtt.MQTTv5,
    )
    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    mq = config.mqtt
    if mq.username:
        client.username_pw_set(mq.username, mq.password.get_secret_value() if mq.password else None)
    if tls:
        client.tls_set_context(_tls_context(config))
    try:
        client.connect(host, port, keepalive=10)
    except (OSError, ssl.SSLError) as exc:
        return str(exc)
    client.loop_start()
    try:
        if not done.wait(timeout_s):
            return f"no CONNACK within {timeout_s:g} s"
        reason = result.get("reason")
        if reason is not None and getattr(reason, "is_failure", False):
            return str(reason)
        return None
    finally:
        client.disconnect()
        client.loop_stop()


# ------------------------------------------------------------------------ clock, disk, perms


def check_clock(synchronised: Callable[[], bool] = clock_synchronised) -> Check:
    if synchronised():
        return Check("clock", "system", "PASS", f"synchronised (now {iso_ms()})")
    return Check(
        "clock",
        "system",
        "WARN",
        f"NOT synchronised (now {iso_ms()}): event times are flagged untrusted",
        "check NTP: `timedatectl timesync-status`; the gateway "
        "needs to reach an NTP server (the Pi has no battery clock)",
    )


def check_disk(
    data_dir: Path, cameras: int, min_free_bytes: int, write_mb: int = 32
) -> list[Check]:
    out: list[Check] = []
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        usage = shutil.disk_usage(data_dir)
    except OSError as exc:
        return [
            Check(
                "disk",
                str(data_dir),
                "FAIL",
                f"data dir unusable: {exc.strerror}",
                "check the data partition is mounted (see image-build/README.md)",
            )
        ]
    free_gb = usage.free / 1e9
    text = f"{free_gb:.1f} GB free of {usage.total / 1e9:.1f} GB"
    if usage.free < min_free_bytes:
        out.append(
            Check(
                "disk",
                str(data_dir),
                "FAIL",
                text,
                "free space or use a larger card/SSD; recordings need room to rotate",
            )
        )
    else:
        out.append(Check("disk", str(data_dir), "PASS", text))
    speed = write_speed_mb_s(data_dir, write_mb)
    if speed is None:
        out.append(
            Check(
                "disk-write",
                str(data_dir),
                "FAIL",
                "cannot write a test file",
                "check permissions of the data dir (guetteur user) and the partition",
            )
        )
        return out
    need = max(MIN_WRITE_MB_S, 3 * CAMERA_MB_S * cameras)
    text = f"sequential write {speed:.1f} MB/s ({write_mb} MiB with fsync); {cameras} camera(s) need ≥ {need:.1f} MB/s"
    if speed < MIN_WRITE_MB_S:
        out.append(
            Check(
                "disk-write",
                str(data_dir),
                "FAIL",
                text,
                "the card is too slow or worn out: replace it (A2/V30 card or SSD)",
            )
        )
    elif speed < need:
        out.append(
            Check("disk-write", str(data_dir), "WARN", text, "fewer cameras or a faster card/SSD")
        )
    else:
        out.append(Check("disk-write", str(data_dir), "PASS", text))
    return out


def write_speed_mb_s(directory: Path, mb: int) -> float | None:
    """Write ``mb`` MiB in 1 MiB blocks (the recorder's pattern), fsync, measure, delete."""
    path = directory / f".doctor-write-{os.getpid()}"
    block = os.urandom(1 << 20)  # random: compressing or deduplicating storage cannot cheat
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            start = time.perf_counter()
            for _ in range(mb):
                os.write(fd, block)
            os.fsync(fd)
            elapsed = time.perf_counter() - start
        finally:
            os.close(fd)
            path.unlink(missing_ok=True)
    except OSError:
        return None
    return mb / elapsed if elapsed > 0 else None


def check_permissions(config: GuetteurConfig, config_path: Path) -> list[Check]:
    out: list[Check] = []
    data = Path(config.data_dir)
    if data.exists() and not os.access(data, os.W_OK | os.X_OK):
        out.append(
            Check(
                "permissions",
                str(data),
                "FAIL",
                "data dir not writable by this user",
                f"chown -R guetteur: {data}",
            )
        )
    try:
        mode = stat.S_IMODE(config_path.stat().st_mode)
        if mode & 0o007:
            out.append(
                Check(
                    "permissions",
                    str(config_path),
                    "WARN",
                    f"config is world-readable (mode {mode:04o}) and may hold passwords",
                    f"chmod 0640 {config_path}",
                )
            )
    except OSError:
        pass
    tls = config.mqtt.tls
    if tls and tls.key_file:
        try:
            mode = stat.S_IMODE(Path(tls.key_file).stat().st_mode)
            if mode & 0o077:
                out.append(
                    Check(
                        "permissions",
                        tls.key_file,
                        "FAIL",
                        f"device key readable by others (mode {mode:04o})",
                        f"chmod 0600 {tls.key_file}",
                    )
                )
            elif not os.access(tls.key_file, os.R_OK):
                out.append(
                    Check(
                        "permissions",
                        tls.key_file,
                        "FAIL",
                        "device key not readable",
                        f"chown guetteur {tls.key_file}",
                    )
                )
        except OSError as exc:
            out.append(
                Check(
                    "permissions",
                    tls.key_file,
                    "FAIL",
                    f"device key: {exc.strerror}",
                    "re-provision the gateway",
                )
            )
    for cam in config.cameras:
        devices = []
        if cam.url.startswith("v4l2:"):
            devices.append(cam.url.removeprefix("v4l2:"))
        if cam.ptz and cam.ptz.serial_port:
            devices.append(cam.ptz.serial_port)
        for dev in devices:
            if not os.path.exists(dev):
                out.append(
                    Check(
                        "permissions",
                        dev,
                        "FAIL",
                        f"camera {cam.id}: {dev} is missing",
                        "plug the adapter in; `ls /dev/ptz/` lists the stable names",
                    )
                )
            elif not os.access(dev, os.R_OK | os.W_OK):
                out.append(
                    Check(
                        "permissions",
                        dev,
                        "FAIL",
                        f"camera {cam.id}: {dev} not accessible",
                        "the guetteur user must be in the dialout/video group",
                    )
                )
    if not out:
        out.append(Check("permissions", "files", "PASS", "data dir, config, key and devices OK"))
    return out


def check_watchdog(device: str | None) -> Check:
    if not device:
        return Check(
            "watchdog",
            "hardware",
            "WARN",
            "this board profile has no watchdog",
            "a hung kernel will need a power cycle",
        )
    if Path(device).exists():
        return Check("watchdog", device, "PASS", "present (systemd pets it: RuntimeWatchdogSec)")
    return Check(
        "watchdog",
        device,
        "WARN",
        "not present",
        "enable the watchdog driver (dtparam=watchdog=on on a Pi; iTCO_wdt on x86)",
    )


# ----------------------------------------------------------------------------------- report


def run_checks(
    config_path: Path,
    camera_timeout_s: float = 5.0,
    write_mb: int = 32,
    board: str | None = None,
    sample_s: float = 2.0,
) -> list[Check]:
    checks: list[Check] = []
    cfg_check, config = check_config(config_path)
    checks.append(cfg_check)
    if config is None:
        return checks
    from guetteur.ops.hwprofile import ProfileError, detect_board

    try:
        profile = detect_board(override=board)
        min_free, wd = profile.storage.min_free_bytes, profile.watchdog.device
        checks.append(Check("board", profile.board, "PASS", profile.name))
    except ProfileError as exc:
        min_free, wd = 2_000_000_000, "/dev/watchdog0"
        checks.append(Check("board", "?", "WARN", str(exc), "set the board explicitly"))
    cams = [c for c in config.cameras if c.enabled]
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(cams) + 1))) as pool:
        cam_futures = [pool.submit(probe_camera, c, camera_timeout_s, sample_s) for c in cams]
        broker_future = pool.submit(check_broker, config, camera_timeout_s)
        checks += [f.result() for f in cam_futures]
        checks += broker_future.result()
    checks.append(check_clock())
    checks += check_disk(Path(config.data_dir), len(cams), min_free, write_mb)
    checks += check_permissions(config, config_path)
    checks.append(check_watchdog(wd))
    return checks


def format_report(checks: list[Check]) -> str:
    width = max(len(f"{c.check} {c.subject}") for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{c.verdict:4}  {f'{c.check} {c.subject}':<{width}}  {c.detail}")
        if c.action and c.verdict != "PASS":
            lines.append(f"      {'':<{width}}  → {c.action}")
    fails = sum(c.verdict == "FAIL" for c in checks)
    warns = sum(c.verdict == "WARN" for c in checks)
    verdict = "READY" if not fails else "NOT READY"
    lines.append(f"{verdict}: {len(checks)} checks, {fails} failed, {warns} warning(s)")
    return "\n".join(lines)


def exit_code(checks: list[Check], strict: bool = False) -> int:
    bad = {"FAIL", "WARN"} if strict else {"FAIL"}
    return 1 if any(c.verdict in bad for c in checks) else 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, default=Path("/etc/guetteur/guetteur.yaml"))
    parser.add_argument("--json", action="store_true", help="machine-readable report")
    parser.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    parser.add_argument("--timeout", type=float, default=5.0, help="per camera/broker timeout (s)")
    parser.add_argument("--write-mb", type=int, default=32, help="MiB written by the disk test")
    parser.add_argument("--board", default=None, help="board profile (default: detect)")
    parser.add_argument(
        "--sample", type=float, default=2.0, help="seconds of packets read per camera for fps"
    )


def run(args: argparse.Namespace) -> int:
    checks = run_checks(args.config, args.timeout, args.write_mb, args.board, args.sample)
    code = exit_code(checks, args.strict)
    if checks[0].check == "config" and checks[0].verdict == "FAIL":
        code = 2
    if args.json:
        print(
            json.dumps(
                {"v": 1, "time": iso_ms(), "ok": code == 0, "checks": [asdict(c) for c in checks]},
                indent=2,
                ensure_ascii=False,
            )
        )
    else:
        print(format_report(checks))
    sys.stdout.flush()
    return code
