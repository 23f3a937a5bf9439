"""Signed update bundles: real venvs, real offline pip installs, a real (fake) agent process."""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import signal
import subprocess
import tarfile
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from guetteur import keyfiles
from guetteur.ops import update_cli, updates

AGENT_SOURCE = textwrap.dedent('''
    """A stand-in agent: reports health the way guetteur.runtime.health.HealthSupervisor does."""
    import json, os, sys, time
    from importlib.metadata import version

    def main():
        health = os.environ["TEST_HEALTH_FILE"]
        healthy = {healthy!r}
        v = version("guetteur")
        while True:
            tmp = health + ".tmp"
            with open(tmp, "w") as f:
                json.dump({{"v": 1, "healthy": healthy, "version": v, "pid": os.getpid()}}, f)
            os.replace(tmp, health)
            time.sleep(0.1)
''')


def make_wheel(directory: Path, version: str, healthy: bool) -> Path:
    """A minimal but real wheel named guetteur with a `guetteur` console script."""
    dist = f"guetteur-{version}.dist-info"
    files = {
        "fakeagent.py": AGENT_SOURCE.format(healthy=healthy).encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: guetteur\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist}/entry_points.txt": b"[console_scripts]\nguetteur = fakeagent:main\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = directory / f"guetteur-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.root = tmp / "opt"
        self.health = tmp / "health.json"
        self.pidfile = tmp / "agent.pid"
        self.pub = tmp / "update.pub"
        priv = tmp / "update.key"
        keyfiles.generate(priv, self.pub)
        self.key = keyfiles.load_private(priv)
        self.restart = tmp / "restart.sh"
        # what `systemctl restart guetteur.service` does, for a process we own
        self.restart.write_text(
            textwrap.dedent(f"""\
            #!/bin/sh
            if [ -f {self.pidfile} ]; then kill $(cat {self.pidfile}) 2>/dev/null; sleep 0.1; fi
            rm -f {self.health}
            TEST_HEALTH_FILE={self.health} {self.root}/current/bin/guetteur >/dev/null 2>&1 &
            echo $! > {self.pidfile}
        """)
        )
        self.restart.chmod(0o755)

    def bundle(
        self, version: str, healthy: bool = True, key: Ed25519PrivateKey | None = None
    ) -> Path:
        wheels = self.tmp / f"wheels-{version}"
        wheels.mkdir()
        whl = make_wheel(wheels, version, healthy)
        return updates.build_bundle(
            [whl], version, key or self.key, self.tmp / f"agent-{version}.gtb"
        )

    def apply(self, bundle: Path, timeout: float = 6.0) -> updates.UpdateResult:
        return updates.apply_bundle(
            bundle,
            self.root,
            keyfiles.load_public(self.pub),
            self.health,
            str(self.restart),
            health_timeout_s=timeout,
        )

    def running_version(self) -> str | None:
        rel = updates.current_release(self.root)
        return rel.name if rel else None

    def stop_agent(self) -> None:
        if self.pidfile.exists():
            try:
                os.kill(int(self.pidfile.read_text()), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.stop_agent()


@pytest.mark.slow
def test_install_then_unhealthy_update_is_rolled_back(rig: Rig) -> None:
    first = rig.apply(rig.bundle("1.0.0"))
    assert first.status == "installed", first.message
    assert rig.running_version() == "1.0.0"
    assert (rig.root / "current").is_symlink()
    assert json.loads(rig.health.read_text())["version"] == "1.0.0"
    # the release has its own pip: the next update can run from it
    release_python = rig.root / "releases" / "1.0.0" / "bin" / "python"
    pip = subprocess.run([str(release_python), "-m", "pip", "--version"], capture_output=True)
    assert pip.returncode == 0, pip.stderr

    bad = rig.apply(rig.bundle("2.0.0", healthy=False), timeout=3.0)
    assert bad.status == "rolled_back", bad.message
    assert bad.previous == "1.0.0"
    assert "rolled back to 1.0.0" in bad.message
    assert rig.running_version() == "1.0.0"
    assert (rig.root / "releases" / "2.0.0.failed").is_dir()
    # the previous release is really running again and healthy
    assert updates.wait_healthy(rig.health, "1.0.0", 0, 5.0)
    record = json.loads(rig.health.read_text())
    assert record["pid"] == int(rig.pidfile.read_text())


@pytest.mark.slow
def test_bad_signature_is_refused_and_nothing_changes(rig: Rig) -> None:
    assert rig.apply(rig.bundle("1.0.0")).status == "installed"
    before = sorted(p.name for p in (rig.root / "releases").iterdir())
    forged = rig.bundle("1.1.0", key=Ed25519PrivateKey.generate())
    with pytest.raises(updates.UpdateError) as err:
        rig.apply(forged)
    assert err.value.code == "update.signature"
    assert "signature does not match" in err.value.message
    assert rig.running_version() == "1.0.0"
    assert sorted(p.name for p in (rig.root / "releases").iterdir()) == before


def test_wheel_swapped_after_signing_is_refused(rig: Rig, tmp_path: Path) -> None:
    good = rig.bundle("1.0.0")
    # same signed manifest, different wheel bytes (size kept)
    tampered = tmp_path / "tampered.gtb"
    with tarfile.open(good) as src, tarfile.open(tampered, "w") as dst:
        for m in src.getmembers():
            f = src.extractfile(m)
            assert f is not None
            data = f.read()
            if m.name.endswith(".whl"):
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            m.size = len(data)
            import io

            dst.addfile(m, io.BytesIO(data))
    with pytest.raises(updates.UpdateError) as err:
        rig.apply(tampered)
    assert err.value.code == "update.hash"
    assert rig.running_version() is None
    assert not any(p for p in (rig.root / "releases").iterdir() if not p.name.startswith("."))


def test_not_a_bundle_and_cli_inbox(
    rig: Rig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inbox = tmp_path / "updates" / "inbox"
    inbox.mkdir(parents=True)
    (inbox / "junk.gtb").write_bytes(b"this is not a tar archive")
    forged = rig.bundle("1.1.0", key=Ed25519PrivateKey.generate())
    os.replace(forged, inbox / "forged.gtb")
    parser = argparse.ArgumentParser()
    update_cli.add_arguments(parser)
    args = parser.parse_args(
        [
            "--inbox",
            str(inbox),
            "--releases",
            str(rig.root),
            "--public-key",
            str(rig.pub),
            "--health-file",
            str(rig.health),
            "--restart-command",
            str(rig.restart),
            "--json",
        ]
    )
    assert update_cli.run(args) == 1
    results = json.loads(capsys.readouterr().out)
    codes = {r["bundle"]: r["code"] for r in results}
    assert codes == {"junk.gtb": "update.format", "forged.gtb": "update.signature"}
    assert list(inbox.iterdir()) == []  # out of the inbox so the path unit does not loop
    done = tmp_path / "updates" / "done"
    assert (done / "forged.refused.json").exists()


def test_verify_only_and_reproducible_bundle(rig: Rig, tmp_path: Path) -> None:
    wheels = tmp_path / "w"
    wheels.mkdir()
    whl = make_wheel(wheels, "3.0.0", True)
    a = updates.build_bundle(
        [whl], "3.0.0", rig.key, tmp_path / "a.gtb", created="2026-01-01T00:00:00.000Z"
    )
    b = updates.build_bundle(
        [whl], "3.0.0", rig.key, tmp_path / "b.gtb", created="2026-01-01T00:00:00.000Z"
    )
    assert a.read_bytes() == b.read_bytes()
    v = updates.verify_bundle(a, keyfiles.load_public(rig.pub), tmp_path / "x")
    assert v.version == "3.0.0" and [w.name for w in v.wheels] == [whl.name]
    with pytest.raises(updates.UpdateError, match=r"no guetteur 3\.0\.1 wheel"):
        updates.build_bundle([whl], "3.0.1", rig.key, tmp_path / "d.gtb")
    with pytest.raises(updates.UpdateError, match="not a plain version"):
        updates.build_bundle([whl], "../../etc", rig.key, tmp_path / "c.gtb")


def inbox_args(rig: Rig, inbox: Path, supervisor: Path | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    update_cli.add_arguments(parser)
    argv = ["--inbox", str(inbox), "--releases", str(rig.root), "--public-key", str(rig.pub),
            "--health-file", str(rig.health), "--restart-command", str(rig.restart),
            "--health-timeout", "6", "--json"]  # fmt: skip
    if supervisor is not None:
        argv += ["--supervisor-key", str(supervisor)]
    return parser.parse_args(argv)


@pytest.mark.slow
def test_an_older_signed_bundle_is_refused_unless_a_supervisor_allows_that_version(
    rig: Rig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from guetteur.ops import rollback

    assert rig.apply(rig.bundle("1.1.0")).status == "installed"
    assert rig.apply(rig.bundle("1.2.0")).status == "installed"
    floor = rig.root / rollback.FLOOR_FILE  # in the release root: the agent cannot write it
    assert json.loads(floor.read_text())["version"] == "1.2.0"
    # the attack: a genuine, validly signed old release, with the holes 1.2.0 closed
    old = rig.bundle("1.1.5")
    with pytest.raises(rollback.RollbackError, match=r"older than 1\.2\.0") as refused:
        rig.apply(old)
    assert refused.value.code == "update.rollback" and rig.running_version() == "1.2.0"

    # a downgrade permit: signed by the supervisor's key (not the release key), one version
    supervisor_priv, supervisor_pub = tmp_path / "sup.key", tmp_path / "sup.pub"
    keyfiles.generate(supervisor_priv, supervisor_pub)
    supervisor = keyfiles.load_private(supervisor_priv)
    inbox = tmp_path / "updates" / "inbox"
    inbox.mkdir(parents=True)
    os.replace(old, inbox / "old.gtb")
    (inbox / "old.gtb.downgrade").write_bytes(rollback.sign_permit(rig.key, "1.1.5", "test"))
    assert update_cli.run(inbox_args(rig, inbox, supervisor_pub)) == 1
    assert json.loads(capsys.readouterr().out)[0]["code"] == "update.permit"  # release key
    os.replace(tmp_path / "updates" / "done" / "old.refused.gtb", inbox / "old.gtb")
    (inbox / "old.gtb.downgrade").write_bytes(rollback.sign_permit(supervisor, "1.1.4", "test"))
    assert update_cli.run(inbox_args(rig, inbox, supervisor_pub)) == 1
    assert "allows version 1.1.4, not 1.1.5" in capsys.readouterr().out
    os.replace(tmp_path / "updates" / "done" / "old.refused.gtb", inbox / "old.gtb")
    (inbox / "old.gtb.downgrade").write_bytes(rollback.sign_permit(supervisor, "1.1.5", "bug 42"))
    assert update_cli.run(inbox_args(rig, inbox, supervisor_pub)) == 0, capsys.readouterr().out
    assert rig.running_version() == "1.1.5"
    assert json.loads(floor.read_text())["version"] == "1.1.5"
    assert list(inbox.iterdir()) == []  # the permit is used up with its bundle


@pytest.mark.slow
def test_the_helper_never_follows_a_symlink_planted_in_the_inbox(
    rig: Rig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The agent owns the inbox. It once made the root helper write into a directory it chose."""
    updates_dir = tmp_path / "updates"
    inbox = updates_dir / "inbox"
    inbox.mkdir(parents=True)
    chosen = tmp_path / "attacker-chose"  # e.g. /etc/cron.d
    chosen.mkdir()
    (updates_dir / "done").symlink_to(chosen)
    secret = tmp_path / "root-only.txt"
    secret.write_text("root's secret")
    (inbox / "steal.gtb").symlink_to(secret)
    os.replace(rig.bundle("1.0.0"), inbox / "good.gtb")
    with pytest.raises(Exception):  # noqa: B017 - refused whatever the exception
        update_cli.process_inbox(inbox, inbox_args(rig, inbox))
    assert list(chosen.iterdir()) == []  # nothing written where the attacker chose
    (updates_dir / "done").unlink()
    results = update_cli.process_inbox(inbox, inbox_args(rig, inbox))
    by_name = {r["bundle"]: r for r in results}
    assert by_name["steal.gtb"]["code"] == "update.inbox"
    assert by_name["good.gtb"]["status"] == "installed"
    assert list(chosen.iterdir()) == [] and secret.read_text() == "root's secret"
    # the inbox itself swapped for a symlink: refused as a whole
    inbox.rename(updates_dir / "real-inbox")
    inbox.symlink_to(chosen)
    assert update_cli.run(inbox_args(rig, inbox)) == 1
    assert "REFUSED" in capsys.readouterr().out
    # a planted symlink named like the result file is replaced, never written through
    inbox.unlink()
    inbox.mkdir()
    os.replace(rig.bundle("1.0.1"), inbox / "next.gtb")
    victim = tmp_path / "victim.json"
    victim.write_text("untouched")
    (updates_dir / "done" / "next.installed.json").symlink_to(victim)
    assert update_cli.run(inbox_args(rig, inbox)) == 0
    assert victim.read_text() == "untouched"
    assert (
        json.loads((updates_dir / "done" / "next.installed.json").read_text())["status"]
        == "installed"
    )


def test_a_restart_hook_that_never_returns_is_an_update_error() -> None:
    from guetteur.ops.updates import UpdateError, run_hook

    with pytest.raises(UpdateError, match=r"did not return within 0\.5 s"):
        run_hook("sleep 30", timeout_s=0.5)
