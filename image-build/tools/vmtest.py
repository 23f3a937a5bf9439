#!/usr/bin/env python3
"""The gateway image booted in QEMU, the technician's path end to end (`make -C image-build
vm-test`, root). Prints each step with its elapsed time; exits 0 only when every step passed.

Peers, all on the host's loopback: a Mosquitto with a TLS listener (certificate signed by a test
"centre" CA, valid for the address the VM dials), `guetteur centre receive` storing what the
gateway sends, the centre's command-signing key, and QEMU's serial pty as the Pelco-D line.
The VM's only way out is QEMU's user-mode network with `restrict=on`: its one forward takes
10.0.2.100:8883 to the host's broker (a `socat` per connection). The camera is a `test:` source
named in the provisioning file.

Boots (each with the kernel, initrd and cmdline.txt read from the image's FAT partition):
1. a provisioning file whose CA does not sign the broker's certificate: the data partition
   grows; provisioning refuses and leaves its report on FAT; the root partition is unchanged;
2. the file fixed (as the technician would, with mtools): applied, token wiped from FAT, status
   `online` retained on the broker, an event stored by `centre receive`, a signed PTZ command
   reaching the pty;
3. faults: the supervisor loop hangs (debug trigger written on the data partition beforehand)
   and systemd's watchdog restarts the agent; then the receiver stops, events pile up, and QEMU
   is killed (-9) while recording;
4. after the power cut: root unchanged and clean, data partition mounts, every indexed segment
   plays, every event published before the cut is stored by the receiver.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "agent"), str(ROOT), str(Path(__file__).resolve().parent)]

import imagebuild as ib  # noqa: E402
import yaml  # noqa: E402
from tests.helpers_pki import make_ca, make_server_cert  # noqa: E402

from guetteur import keyfiles  # noqa: E402
from guetteur.centre.client import CentreClient  # noqa: E402
from guetteur.dev.broker import PrivateBroker, free_port  # noqa: E402
from guetteur.ops.updates import build_bundle  # noqa: E402
from guetteur.uplink.command_auth import Signer  # noqa: E402

GATEWAY = "gw-vm-01"
GUEST_BROKER = "10.0.2.100"  # inside QEMU's user network; forwarded to the host's broker
SECTOR = 512
MIB = 1 << 20
# The "card" is bigger than the image (sparse: costs no disk): the data partition must grow,
# and recording needs room (the generic-x86 profile keeps 2 GB free).
CARD_GROWTH_MIB = 6144
MTOOLS_ENV = dict(os.environ, MTOOLS_SKIP_CHECK="1")


class Failed(Exception):
    pass


class Timeline:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.steps: list[tuple[str, float]] = []

    def step(self, name: str) -> None:
        elapsed = time.monotonic() - self.t0
        self.steps.append((name, round(elapsed, 1)))
        print(f"[{elapsed:7.1f} s] {name}", flush=True)


# Checks run at every poll of every wait: a VM that died fails the wait at once.
GUARDS: list[Callable[[], None]] = []


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for guard in GUARDS:
            guard()
        value = check()
        if value:
            return value
        time.sleep(every)
    raise Failed(f"timed out after {timeout:.0f} s waiting for {what}")


def partitions(disk: Path) -> list[tuple[int, int]]:
    """(start, size) in bytes of the MBR's partitions."""
    with disk.open("rb") as f:
        mbr = f.read(SECTOR)
    out = []
    for n in range(4):
        entry = mbr[446 + 16 * n : 462 + 16 * n]
        start, count = int.from_bytes(entry[8:12], "little"), int.from_bytes(entry[12:16], "little")
        if count:
            out.append((start * SECTOR, count * SECTOR))
    return out


def sha_of(disk: Path, start: int, size: int) -> str:
    h = hashlib.sha256()
    with disk.open("rb") as f:
        f.seek(start)
        left = size
        while left:
            chunk = f.read(min(left, 8 * MIB))
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


class Card:
    """The disk image, and the partitions a technician (or the test) reads from the host."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fat(self) -> str:
        return f"{self.path}@@{partitions(self.path)[0][0]}"

    def fat_files(self) -> list[str]:
        out = subprocess.run(
            ["mdir", "-b", "-i", self.fat(), "::/"], capture_output=True, text=True, env=MTOOLS_ENV
        ).stdout
        return sorted(line.rsplit("/", 1)[-1] for line in out.split())

    def fat_read(self, name: str) -> bytes | None:
        proc = subprocess.run(
            ["mtype", "-i", self.fat(), f"::{name}"], capture_output=True, env=MTOOLS_ENV
        )
        return proc.stdout if proc.returncode == 0 else None

    def fat_write(self, name: str, content: bytes, work: Path) -> None:
        local = work / name
        local.write_bytes(content)
        subprocess.run(
            ["mcopy", "-o", "-i", self.fat(), str(local), f"::{name}"], check=True, env=MTOOLS_ENV
        )

    def fat_get(self, name: str, dest: Path) -> None:
        subprocess.run(
            ["mcopy", "-o", "-i", self.fat(), f"::{name}", str(dest)], check=True, env=MTOOLS_ENV
        )

    def data_part(self) -> str:
        start, _ = partitions(self.path)[2]
        return f"{self.path}?offset={start}"

    def debugfs(self, *requests: str, write: bool = False) -> str:
        """debugfs on the data partition of the card (powered off), as a file-system editor."""
        script = self.path.parent / "debugfs.cmds"
        script.write_text("\n".join(requests) + "\n")
        cmd = ["debugfs", *(["-w"] if write else []), "-f", str(script), self.data_part()]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        return proc.stdout + proc.stderr

    def root_sha(self) -> str:
        start, size = partitions(self.path)[1]
        return sha_of(self.path, start, size)


class Vm:
    def __init__(self, card: Card, work: Path, broker_port: int, accel: str) -> None:
        self.card, self.work, self.accel = card, work, accel
        self.broker_port = broker_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.boot = 0
        self.console = work / "console-0.log"
        self.pty_fd: int | None = None
        self.serial_bytes = bytearray()
        self.expect_exit = False
        GUARDS.append(self.check)

    def check(self) -> None:
        if self.proc is not None and not self.expect_exit and self.proc.poll() is not None:
            raise Failed(f"QEMU exited ({self.proc.returncode}): see {self.console}")

    def start(self) -> None:
        self.expect_exit = False
        self.boot += 1
        self.console = self.work / f"console-{self.boot}.log"
        kernel, initrd = self.work / "vmlinuz", self.work / "initrd.img"
        self.card.fat_get("vmlinuz", kernel)
        self.card.fat_get("initrd.img", initrd)
        cmdline = (self.card.fat_read("cmdline.txt") or b"").decode().strip()
        forward = f"guestfwd=tcp:{GUEST_BROKER}:8883-cmd:socat - TCP:127.0.0.1:{self.broker_port}"
        # -cpu max: NumPy's wheels need x86-64-v2 (SSE4.2...), which QEMU's default qemu64 CPU
        # lacks (the agent died of SIGILL importing numpy); any gateway PC has it
        cmd = ["qemu-system-x86_64", "-accel", self.accel, "-cpu", "max", "-M", "q35"]
        cmd += ["-smp", "2", "-m", "1536"]
        cmd += ["-display", "none", "-nodefaults", "-no-reboot", "-kernel", str(kernel)]
        cmd += ["-initrd", str(initrd), "-append", cmdline]
        cmd += ["-drive", f"file={self.card.path},format=raw,if=virtio"]
        cmd += ["-chardev", f"file,id=con,path={self.console}", "-serial", "chardev:con"]
        cmd += ["-chardev", "pty,id=ptz", "-serial", "chardev:ptz"]  # the Pelco-D line: ttyS1
        cmd += ["-netdev", f"user,id=n0,restrict=on,{forward}"]
        cmd += ["-device", "virtio-net-pci,netdev=n0", "-device", "i6300esb"]
        cmd += ["-monitor", f"unix:{self.work / 'monitor.sock'},server,nowait"]
        err = (self.work / f"qemu-{self.boot}.log").open("wb")
        self.proc = subprocess.Popen(
            cmd, stdout=err, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        pty = wait_for(
            "QEMU's serial pty",
            lambda: re.search(
                rb"char device redirected to (/dev/pts/\d+) \(label ptz\)",
                (self.work / f"qemu-{self.boot}.log").read_bytes(),
            ),
            20,
            0.1,
        )
        self.pty_fd = os.open(pty.group(1).decode(), os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self.pty_fd)
        threading.Thread(target=self._read_pty, args=(self.pty_fd,), daemon=True).start()

    def _read_pty(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, 256)
            except OSError:
                return
            if not data:
                return
            self.serial_bytes += data

    def text(self) -> str:
        try:
            return self.console.read_text(errors="replace")
        except OSError:
            return ""

    def wait_console(self, what: str, pattern: str, timeout: float) -> re.Match[str]:
        return wait_for(what, lambda: re.search(pattern, self.text()), timeout)

    def monitor(self, command: str) -> None:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.work / "monitor.sock"))
            s.sendall(command.encode() + b"\n")
            time.sleep(0.2)

    def powerdown(self, timeout: float = 120) -> None:
        """As a technician pulls the plug after `systemctl poweroff`: an ACPI power-button press."""
        assert self.proc is not None
        self.expect_exit = True
        self.monitor("system_powerdown")
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise Failed(f"the VM did not power off within {timeout:.0f} s") from None
        self._close()

    def kill9(self) -> None:
        assert self.proc is not None
        self.expect_exit = True
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._close()

    def _close(self) -> None:
        if self.pty_fd is not None:
            os.close(self.pty_fd)
            self.pty_fd = None


def kvm_usable(kernel: Path, work: Path) -> bool:
    """KVM only when a kernel really runs under it: on nested hosts /dev/kvm opens and QEMU
    starts, yet the guest never prints a line."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    log = work / "kvm-probe.log"
    cmd = ["qemu-system-x86_64", "-accel", "kvm", "-M", "q35", "-m", "256", "-display", "none"]
    cmd += [
        "-nodefaults",
        "-no-reboot",
        "-kernel",
        str(kernel),
        "-append",
        "console=ttyS0 panic=-1",
    ]
    cmd += ["-serial", f"file:{log}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(
            "a kernel line under KVM",
            lambda: log.exists() and b"Linux version" in log.read_bytes(),
            15,
        )
        return True
    except Failed:
        return False
    finally:
        proc.kill()
        proc.wait()


class Centre:
    """The host side: TLS broker, receiver, command signer, status and event watcher."""

    def __init__(self, work: Path, py: str) -> None:
        self.work, self.py = work, py
        pki = work / "pki"
        pki.mkdir()
        self.ca, self.other_ca = make_ca("Centre CA"), make_ca("Some other CA")
        server = make_server_cert(self.ca, host=GUEST_BROKER)
        self.ca_file = pki / "ca.pem"
        self.ca_file.write_bytes(self.ca.cert_pem)
        cert, key = server.write(pki, "server")
        self.port = free_port()
        conf = f"listener {self.port} 127.0.0.1\nallow_anonymous true\ncertfile {cert}\nkeyfile {key}\n"
        self.broker = PrivateBroker(work / "broker", port=self.port, extra_conf=conf, listen=False)
        self.broker.start()
        self.key_priv, self.key_pub = pki / "centre-signing.key", pki / "centre-signing.pub"
        keyfiles.generate(self.key_priv, self.key_pub)
        self.receiver: subprocess.Popen[bytes] | None = None
        self.statuses: list[tuple[float, dict[str, Any]]] = []
        self.events: list[dict[str, Any]] = []
        # The broker's certificate names 10.0.2.100 (what the VM dials) and localhost (what the
        # host's own clients dial).
        self.url = f"mqtts://localhost:{self.port}"
        self.client = CentreClient(
            self.url,
            "vmtest-centre",
            ca_file=str(self.ca_file),
            signer=Signer(keyfiles.load_private(self.key_priv)),
            operator="op1",
        )
        self.client.connect()
        topic = f"guetteur/v1/{GATEWAY}"
        self.client.subscribe(
            f"{topic}/status",
            lambda m: self.statuses.append((time.monotonic(), json.loads(m.payload))),
        )
        self.client.subscribe(
            f"{topic}/cam/+/event", lambda m: self.events.append(json.loads(m.payload))
        )

    def start_receiver(self) -> None:
        out = self.work / "receiver"
        cmd = [self.py, "-m", "guetteur", "centre", "receive", "-b", self.url]
        cmd += ["--ca", str(self.ca_file), "--out", str(out), "--client-id", "vmtest-receiver"]
        log = (self.work / "receiver.log").open("ab")
        self.receiver = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def stop_receiver(self) -> None:
        if self.receiver is not None:
            self.receiver.terminate()
            self.receiver.wait(30)
            self.receiver = None

    def stored_event_ids(self) -> set[str]:
        db = self.work / "receiver" / "receiver.db"
        if not db.exists():
            return set()
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as c:
                rows = c.execute("SELECT event_id FROM events WHERE gateway = ?", (GATEWAY,))
                return {r[0] for r in rows}
        except sqlite3.Error:
            return set()

    def online_since(self, t: float) -> dict[str, Any] | None:
        for when, status in self.statuses:
            if when >= t and status.get("state") == "online":
                return status
        return None

    def close(self) -> None:
        self.stop_receiver()
        self.client.close()
        self.broker.stop()


def provision_file(centre: Centre, ca_name: str) -> bytes:
    data = {
        "version": 1,
        "gateway_id": GATEWAY,
        "site": "Banc de test QEMU",
        "broker_url": f"mqtts://{GUEST_BROKER}:8883",
        "ca_certificate": ca_name,
        "enrolment_token": "enrol-vmtest-0123456789",
        "centre_keys": ["centre-signing.pub"],
        "board": "generic-x86",
        "cameras": [
            {
                "id": "cam1",
                "url": "test:walk",
                "ptz": {"protocol": "pelco-d", "serial_port": "/dev/ttyS1", "address": 1},
            }
        ],
    }
    return yaml.safe_dump(data, sort_keys=False).encode()


def pelco_frames(data: bytes, address: int = 1) -> list[bytes]:
    """Pelco-D frames (0xFF, address, cmd1, cmd2, data1, data2, checksum) found in ``data``."""
    frames = []
    for i in range(len(data) - 6):
        f = data[i : i + 7]
        if f[0] == 0xFF and f[1] == address and sum(f[1:6]) % 256 == f[6]:
            frames.append(bytes(f))
    return frames


def check_recordings(
    card: Card, work: Path, py_check: Callable[[Path], str | None]
) -> tuple[int, list[str]]:
    """Copy the recording ring off the data partition and play every indexed segment."""
    dest = work / "rec-copy"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir()
    card.debugfs(f"rdump /guetteur/rec {dest}")
    rec = dest / "rec"
    if not (rec / "index.sqlite3").exists():
        raise Failed(
            f"no recording index on the data partition ({card.debugfs('ls -l /guetteur')[-400:]})"
        )
    from guetteur.record.index import SegmentIndex

    index = SegmentIndex(rec)
    try:
        segments = index.all_segments()
        problems = [f"{s.path}: {p}" for s in segments if (p := py_check(index.path_of(s)))]
    finally:
        index.close()
    return len(segments), problems


def segment_problem(path: Path) -> str | None:
    """None when the segment opens and its first keyframe decodes."""
    import av

    try:
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            for packet in c.demux(stream):
                for _frame in packet.decode():
                    return None
        return "no frame decodes"
    except (av.FFmpegError, OSError, IndexError) as exc:
        return str(exc)


def release_bundle(work: Path, version: str, broken: bool, key: Path, wheelhouse: Path) -> Path:
    """A signed bundle of the agent at ``version`` (this tree with its version changed) and every
    dependency wheel. ``broken``: its `guetteur run` never comes up (no READY, no health file),
    as a release with a start-up bug would."""
    src = work / f"src-{version}"
    ib._copy_source(ROOT, src)
    pyproject = src / "pyproject.toml"
    pyproject.write_text(
        re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', pyproject.read_text())
    )
    init = src / "agent/guetteur/__init__.py"
    init.write_text(re.sub(r'__version__ = ".*"', f'__version__ = "{version}"', init.read_text()))
    if broken:
        cli = src / "agent/guetteur/cli.py"
        text = cli.read_text()
        hang = (
            "    import time  # vm-test: a release that never comes up\n\n    time.sleep(10**9)\n"
        )
        text = text.replace(
            "    parser = build_parser()\n", hang + "    parser = build_parser()\n", 1
        )
        cli.write_text(text)
    wheel = ib.build_wheel(src, work / f"build-{version}")
    wheels = [wheel, *sorted(wheelhouse.glob("*.whl"))]
    return build_bundle(
        wheels, version, keyfiles.load_private(key), work / f"guetteur-{version}.gtb"
    )


def status_version_since(centre: Centre, t: float, version: str) -> dict[str, Any] | None:
    for when, status in centre.statuses:
        if when >= t and status.get("state") == "online" and status.get("version") == version:
            return status
    return None


def run(args: argparse.Namespace) -> int:
    tl = Timeline()
    work = args.work.resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    card = Card(work / "card.img")
    subprocess.run(["cp", "--sparse=always", str(args.image), str(card.path)], check=True)
    with card.path.open("r+b") as f:
        f.truncate(card.path.stat().st_size + CARD_GROWTH_MIB * MIB)
    root_before = card.root_sha()
    tl.step(f"card: {args.image.name} copied, {CARD_GROWTH_MIB} MiB bigger than the image")

    card.fat_get("vmlinuz", work / "vmlinuz")
    accel = args.accel
    if accel == "auto":
        accel = "kvm" if kvm_usable(work / "vmlinuz", work) else "tcg,thread=multi"
    tl.step(f"accelerator: {accel}")

    centre = Centre(work, args.python)
    vm = Vm(card, work, centre.port, accel)
    try:
        centre.start_receiver()
        tl.step(
            f"host peers: TLS Mosquitto on 127.0.0.1:{centre.port}, centre receive, signing key"
        )

        # -- boot 1: a CA that does not sign the broker's certificate ---------------------------
        card.fat_write("centre-ca.pem", centre.ca.cert_pem, work)
        card.fat_write("wrong-ca.pem", centre.other_ca.cert_pem, work)
        card.fat_write("centre-signing.pub", centre.key_pub.read_bytes(), work)
        card.fat_write("guetteur-provision.yaml", provision_file(centre, "wrong-ca.pem"), work)
        tl.step("FAT: guetteur-provision.yaml naming the wrong CA written with mtools")
        vm.start()
        m = vm.wait_console("the data partition grown", r"grown from (\d+) MiB to (\d+) MiB", 600)
        tl.step(f"boot 1: data partition grown from {m.group(1)} to {m.group(2)} MiB")
        vm.wait_console("provisioning refused", r"provisioning refused", 600)
        tl.step("boot 1: provisioning refused (console)")
        time.sleep(3)
        vm.powerdown()
        report = (card.fat_read("guetteur-provision.report.txt") or b"").decode("utf-8-sig")
        if "RÉSULTAT : REFUSÉ" not in report or "this CA does not verify" not in report:
            raise Failed(f"no refusal report on FAT: {card.fat_files()} {report!r}")
        if "guetteur-provision.yaml" not in card.fat_files():
            raise Failed("the refused provisioning file left the FAT partition")
        if card.root_sha() != root_before:
            raise Failed("the root partition changed during boot 1")
        tl.step("boot 1: report on FAT (refused, broker certificate), file kept, root unchanged")

        # -- boot 2: the technician fixes the file -------------------------------------------
        card.fat_write("guetteur-provision.yaml", provision_file(centre, "centre-ca.pem"), work)
        t_boot2 = time.monotonic()
        vm.start()
        vm.wait_console("provisioning applied", r"provisioned gateway " + GATEWAY, 900)
        tl.step("boot 2: provisioning applied")
        status = wait_for("status online retained", lambda: centre.online_since(t_boot2), 900)
        tl.step(f"boot 2: status online at the centre (version {status.get('version')})")
        retained = retained_status(centre)
        if retained.get("state") != "online":
            raise Failed(f"the retained status is {retained}")
        tl.step("boot 2: a fresh subscriber gets the retained status online")
        wait_for("an event stored by centre receive", centre.stored_event_ids, 900)
        tl.step(f"boot 2: event stored by centre receive ({len(centre.stored_event_ids())})")
        reply = centre.client.request(
            GATEWAY, "ptz", {"camera": "cam1", "action": "move", "pan": 0.5}, timeout=60
        )
        if not reply.get("ok"):
            raise Failed(f"ptz refused: {reply}")
        frames = wait_for(
            "a Pelco-D frame on the pty", lambda: pelco_frames(bytes(vm.serial_bytes)), 60
        )
        tl.step(f"boot 2: PTZ move signed by the centre reached the pty ({frames[0].hex(' ')})")
        vm.powerdown()
        files = card.fat_files()
        applied = (card.fat_read("guetteur-provision.applied.yaml") or b"").decode()
        if "guetteur-provision.yaml" in files or "enrol-vmtest" in applied:
            raise Failed(f"token not wiped from FAT: {files}")
        if card.root_sha() != root_before:
            raise Failed("the root partition changed during boot 2")
        tl.step("boot 2: token wiped from FAT (applied copy without it), root unchanged")

        # -- boot 3: watchdog, then a power cut while recording -------------------------------
        trigger = work / "hang-main-loop"
        trigger.write_text(json.dumps({"after_s": 20}))
        out = card.debugfs(
            "mkdir /guetteur/debug", f"write {trigger} /guetteur/debug/hang-main-loop", write=True
        )
        if "hang-main-loop" not in card.debugfs("ls /guetteur/debug"):
            raise Failed(f"cannot write the debug trigger on the data partition: {out[-300:]}")
        tl.step("data partition: debug hang trigger written (debugfs)")
        t_boot3 = time.monotonic()
        vm.start()
        first = wait_for("status online (boot 3)", lambda: centre.online_since(t_boot3), 900)
        tl.step("boot 3: online")
        t_online = time.monotonic()

        def died() -> float | None:
            # the hung agent is killed by the watchdog: the broker publishes its will (offline)
            return next(
                (w for w, st in centre.statuses if w >= t_online and st.get("state") != "online"),
                None,
            )

        t_dead = wait_for("the hung agent killed (its will: offline)", died, 400)
        tl.step("boot 3: the hung agent was killed (status offline from its will)")
        again = wait_for(
            "status online after the restart", lambda: centre.online_since(t_dead), 600
        )
        tl.step(
            f"boot 3: restarted by systemd and online again (uptime {again.get('uptime_s')} s, "
            f"was {first.get('uptime_s')} s)"
        )
        centre.stop_receiver()
        before_cut = len(centre.events)
        wait_for(
            "events while the receiver is away", lambda: len(centre.events) >= before_cut + 2, 300
        )
        pending = {e["event_id"] for e in centre.events} - centre.stored_event_ids()
        vm.kill9()
        tl.step(f"boot 3: QEMU killed (-9) while recording, {len(pending)} event(s) not yet stored")

        # -- boot 4: after the power cut ------------------------------------------------------
        centre.start_receiver()
        t_boot4 = time.monotonic()
        vm.start()
        wait_for("status online (boot 4)", lambda: centre.online_since(t_boot4), 900)
        tl.step("boot 4: online after the power cut")
        wait_for(
            "every event published before the cut stored",
            lambda: pending <= centre.stored_event_ids(),
            600,
        )
        tl.step(f"boot 4: the {len(pending)} pending event(s) stored by the receiver")
        text = vm.text()
        if re.search(r"EXT4-fs \(vda2\).*(error|recovery)", text):
            raise Failed("the root file system needed recovery")
        vm.powerdown()
        if card.root_sha() != root_before:
            raise Failed("the root partition changed after the power cut")
        cause = "recorded" if "Watchdog timeout" in agent_journal(card, work, 400) else "not kept"
        tl.step(f"journal on the data partition: systemd's 'Watchdog timeout' of boot 3 {cause}")
        count, problems = check_recordings(card, work, segment_problem)
        if problems or not count:
            raise Failed(f"recording index after the power cut: {count} segments, {problems}")
        tl.step(f"boot 4: root unchanged; {count} indexed segments, every one plays")
        if args.skip_updates:
            tl.step("updates: skipped (--skip-updates)")
        else:
            run_updates(args, tl, card, vm, centre, work, root_before)
    except Failed as exc:
        tl.step(f"FAILED: {exc}")
        print(f"console of boot {vm.boot}: {vm.console}", flush=True)
        if vm.proc is not None and vm.proc.poll() is None:
            try:
                vm.powerdown(90)  # the journal reaches the data partition
            except Failed:
                vm.kill9()
        print(agent_journal(card, work), flush=True)
        return 1
    finally:
        if vm.proc is not None and vm.proc.poll() is None:
            vm.kill9()
        centre.close()
        (work / "timeline.json").write_text(
            json.dumps({"accel": accel, "steps": tl.steps}, indent=1)
        )
    tl.step("vm-test passed")
    return 0


def run_updates(
    args: argparse.Namespace,
    tl: Timeline,
    card: Card,
    vm: Vm,
    centre: Centre,
    work: Path,
    root_sha: str,
) -> None:
    """Boot 5: a good signed update (0.2.0), then one that never comes up healthy (0.3.0),
    both dropped into the update inbox on the data partition; the root helper installs the
    first, then rolls the second back to it."""
    out = args.image.resolve().parent
    key = out / "vm" / "keys" / "update-signing"
    houses = sorted((out / "vm").glob("wheelhouse-*"))
    if not key.exists() or not houses:
        raise Failed(
            f"no test update key {key} or wheelhouse: build the image with `make vm-image`"
        )
    good = release_bundle(work, "0.2.0", False, key, houses[-1])
    bad = release_bundle(work, "0.3.0", True, key, houses[-1])
    out_ = card.debugfs(
        f"write {good} /guetteur/updates/inbox/{good.name}",
        f"write {bad} /guetteur/updates/inbox/{bad.name}",
        write=True,
    )
    if bad.name not in card.debugfs("ls /guetteur/updates/inbox"):
        raise Failed(f"cannot drop the bundles into the update inbox: {out_[-300:]}")
    tl.step(
        f"updates: {good.name} and {bad.name} (signed, {good.stat().st_size // MIB} MiB each) in the inbox"
    )
    t5 = time.monotonic()
    vm.start()
    wait_for(
        "the agent online at 0.2.0", lambda: status_version_since(centre, t5, "0.2.0"), 1800, 2
    )
    tl.step("boot 5: update 0.2.0 installed, agent online at 0.2.0")
    t_good = time.monotonic()

    def stopped_for_next() -> float | None:
        # 0.2.0 stops (its farewell or its will: offline) for the helper to start 0.3.0
        return next(
            (w for w, st in centre.statuses if w >= t_good and st.get("state") != "online"), None
        )

    t_bad = wait_for("the agent stopped for 0.3.0", stopped_for_next, 1800, 2)
    tl.step("boot 5: agent stopped for 0.3.0")
    again = wait_for(
        "the agent online at 0.2.0 again",
        lambda: status_version_since(centre, t_bad, "0.2.0"),
        1200,
        2,
    )
    tl.step(f"boot 5: 0.3.0 never healthy, rolled back: online at {again.get('version')}")
    vm.powerdown()
    done = card.debugfs("ls /guetteur/updates/done")
    if f"{good.stem}.installed.json" not in done or f"{bad.stem}.rolled_back.json" not in done:
        raise Failed(f"update results on the data partition: {done[-600:]}")
    if card.root_sha() != root_sha:
        raise Failed("the root partition changed during the updates")
    tl.step("boot 5: results installed / rolled_back in updates/done, root unchanged")


def agent_journal(card: Card, work: Path, lines: int = 60) -> str:
    """The last lines of the agent's units from the journal on the data partition (every boot)."""
    dest = work / "journal-copy"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir()
    card.debugfs(f"rdump /journal {dest}")
    out = []
    for d in sorted((dest / "journal").glob("*/")):
        cmd = [
            "journalctl",
            f"--directory={d}",
            "--no-pager",
            "-n",
            str(lines),
            "-o",
            "short-precise",
        ]
        for unit in ("guetteur.service", "guetteur-provision.service", "guetteur-update.service"):
            cmd += ["-u", unit]
        out.append(subprocess.run(cmd, capture_output=True, text=True).stdout)
    return "journal of the agent's units (from the data partition):\n" + "\n".join(out)


def retained_status(centre: Centre) -> dict[str, Any]:
    """What a centre connecting now is told: the retained status, through a fresh client."""
    got: list[dict[str, Any]] = []
    with CentreClient(centre.url, "vmtest-late", ca_file=str(centre.ca_file)) as late:
        late.subscribe(f"guetteur/v1/{GATEWAY}/status", lambda m: got.append(json.loads(m.payload)))
        wait_for("the retained status", lambda: got, 10)
    return got[0]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument(
        "--work", type=Path, default=None, help="default: out/vm/test next to the image"
    )
    parser.add_argument(
        "--accel",
        default=os.environ.get("GUETTEUR_VM_ACCEL", "auto"),
        help="kvm, tcg or auto (probe)",
    )
    parser.add_argument(
        "--python", default=sys.executable, help="Python with guetteur for `centre receive`"
    )
    parser.add_argument(
        "--skip-updates", action="store_true", help="stop after the power cut (no boot 5)"
    )
    args = parser.parse_args()
    args.work = args.work or args.image.parent / "vm" / "test"
    if os.geteuid() != 0:
        print("vm-test: run as root (QEMU serial pty, debugfs on the card)", file=sys.stderr)
        return 2
    for tool in ("qemu-system-x86_64", "mtype", "debugfs", "socat"):
        if shutil.which(tool) is None:
            print(f"vm-test: {tool} missing: run scripts/setup-system", file=sys.stderr)
            return 2
    # a CI timeout or Ctrl-C: QEMU, the broker and the receiver are stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
