"""Signed agent updates: verify a bundle, install a new release, switch, wait for health, roll back.

A bundle (``*.gtb``) is a tar archive holding::

    manifest.json   {"format": 1, "version": "0.2.0", "created": ..., "package": "guetteur",
                     "files": [{"name": "wheels/x.whl", "sha256": "...", "size": N}, ...]}
    manifest.sig    base64 Ed25519 signature of the exact bytes of manifest.json
    wheels/*.whl    the agent and every dependency (installed offline: --no-index)

Releases live under ``/opt/guetteur/releases/<version>`` (each a venv); ``/opt/guetteur/current``
is a symlink switched atomically (a new link renamed over the old one). After the switch the agent
is restarted with a command hook (``systemctl restart --no-block guetteur.service`` in production) and the
helper waits for the agent's health file (written by :class:`guetteur.runtime.health.HealthSupervisor`)
to say "healthy" with the new version. If it does not within the timeout, ``current`` goes back
to the previous release and the agent is restarted again.

This runs as root in ``guetteur-update.service``; the agent itself never writes ``/opt``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from guetteur.errors import GuetteurError
from guetteur.ops import rollback
from guetteur.runtime.health import read_health_file
from guetteur.timeutil import iso_ms

log = logging.getLogger(__name__)

BUNDLE_FORMAT = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$")
FILE_RE = re.compile(r"^wheels/[A-Za-z0-9][A-Za-z0-9._+-]*\.whl$")
MAX_BUNDLE_BYTES = 1 << 30
KEEP_RELEASES = 3


class UpdateError(GuetteurError):
    """An update refused or failed, with a machine code and a sentence a technician can act on."""

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


# ---------------------------------------------------------------------------------------------
# keys and bundles


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_bundle(
    wheels: Sequence[Path],
    version: str,
    key: Ed25519PrivateKey,
    out: Path,
    package: str = "guetteur",
    created: str | None = None,
) -> Path:
    """Write a signed bundle. Reproducible: sorted members, fixed mtimes/owners."""
    if not VERSION_RE.match(version):
        raise UpdateError("update.version", f"version {version!r} is not a plain version string")
    wheel_prefix = f"{package.replace('-', '_')}-{version}-"
    if not any(w.name.startswith(wheel_prefix) for w in wheels):
        raise UpdateError(
            "update.file",
            f"no {package} {version} wheel among the wheels: the bundle's version must be the "
            "agent wheel's version (the agent reports it when healthy)",
        )
    files = []
    for w in sorted(wheels, key=lambda p: p.name):
        name = f"wheels/{w.name}"
        if not FILE_RE.match(name):
            raise UpdateError("update.file", f"{w.name} is not a wheel file name")
        files.append({"name": name, "sha256": _sha256(w), "size": w.stat().st_size})
    manifest = {
        "format": BUNDLE_FORMAT,
        "package": package,
        "version": version,
        "created": created or iso_ms(),
        "files": files,
    }
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    signature = base64.b64encode(key.sign(manifest_bytes)) + b"\n"

    def add(
        tar: tarfile.TarFile, name: str, data: bytes | None = None, path: Path | None = None
    ) -> None:
        info = tarfile.TarInfo(name)
        info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = 0o644, 0, 0, 0, "", ""
        if data is not None:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        elif path is not None:
            info.size = path.stat().st_size
            with path.open("rb") as f:
                tar.addfile(info, f)

    tmp = out.with_name(f".{out.name}.tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        add(tar, MANIFEST, manifest_bytes)
        add(tar, SIGNATURE, signature)
        for w, entry in zip(sorted(wheels, key=lambda p: p.name), files, strict=True):
            add(tar, str(entry["name"]), path=w)
    os.replace(tmp, out)
    return out


@dataclass(frozen=True)
class VerifiedBundle:
    version: str
    package: str
    directory: Path  # extracted, verified files (manifest + wheels)
    wheels: tuple[Path, ...]


def verify_bundle(bundle: Path, public_key: Ed25519PublicKey, workdir: Path) -> VerifiedBundle:
    """Check signature, then every file's size and sha256; extract into ``workdir``.

    Nothing outside ``workdir`` is touched; any problem raises UpdateError."""
    try:
        size = bundle.stat().st_size
    except OSError as exc:
        raise UpdateError(
            "update.missing", f"cannot read bundle {bundle}: {exc.strerror}"
        ) from None
    if size > MAX_BUNDLE_BYTES:
        raise UpdateError("update.size", f"{bundle.name} is {size} bytes, above the 1 GiB limit")
    try:
        tar = tarfile.open(bundle, "r:*")  # noqa: SIM115 - closed by the `with tar:` below
    except (tarfile.TarError, OSError):
        raise UpdateError(
            "update.format", f"{bundle.name} is not a tar archive (an update bundle)"
        ) from None
    with tar:
        members = {m.name: m for m in tar.getmembers()}
        for name, m in members.items():
            if not m.isfile():
                raise UpdateError("update.format", f"{bundle.name}: {name} is not a regular file")
        if MANIFEST not in members or SIGNATURE not in members:
            raise UpdateError("update.format", f"{bundle.name} has no {MANIFEST}/{SIGNATURE}")

        def read(name: str) -> bytes:
            f = tar.extractfile(members[name])
            assert f is not None  # regular file checked above
            return f.read()

        manifest_bytes = read(MANIFEST)
        try:
            signature = base64.b64decode(read(SIGNATURE).strip(), validate=True)
            public_key.verify(signature, manifest_bytes)
        except (InvalidSignature, ValueError):
            raise UpdateError(
                "update.signature",
                f"{bundle.name}: the signature does not match the update key; the "
                "bundle was altered or signed by someone else. Not installed.",
            ) from None
        try:
            manifest = json.loads(manifest_bytes)
            version = str(manifest["version"])
            package = str(manifest.get("package", "guetteur"))
            files = manifest["files"]
            fmt = manifest["format"]
        except (ValueError, KeyError, TypeError):
            raise UpdateError("update.manifest", f"{bundle.name}: manifest is not valid") from None
        if fmt != BUNDLE_FORMAT:
            raise UpdateError(
                "update.manifest",
                f"{bundle.name}: bundle format {fmt} is not "
                f"supported by this agent (expects {BUNDLE_FORMAT})",
            )
        if not VERSION_RE.match(version) or not re.match(r"^[A-Za-z0-9_.-]+$", package):
            raise UpdateError("update.manifest", f"{bundle.name}: bad version or package name")
        listed = {str(f["name"]): f for f in files}
        extra = set(members) - set(listed) - {MANIFEST, SIGNATURE}
        if extra:
            raise UpdateError(
                "update.file",
                f"{bundle.name}: files not in the manifest: " + ", ".join(sorted(extra)),
            )
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "wheels").mkdir(exist_ok=True)
        wheels = []
        for name, entry in sorted(listed.items()):
            if not FILE_RE.match(name):
                raise UpdateError("update.file", f"{bundle.name}: refusing file name {name!r}")
            if name not in members:
                raise UpdateError("update.file", f"{bundle.name}: {name} is listed but missing")
            f = tar.extractfile(members[name])
            assert f is not None
            target = workdir / name
            h = hashlib.sha256()
            n = 0
            with target.open("wb") as out:
                for block in iter(lambda f=f: f.read(1 << 20), b""):  # type: ignore[misc]
                    h.update(block)
                    n += len(block)
                    out.write(block)
            if h.hexdigest() != entry["sha256"] or n != entry["size"]:
                raise UpdateError(
                    "update.hash",
                    f"{bundle.name}: {name} does not match its sha256 "
                    "in the signed manifest (corrupted or altered). Not installed.",
                )
            wheels.append(target)
        (workdir / MANIFEST).write_bytes(manifest_bytes)
    return VerifiedBundle(version, package, workdir, tuple(wheels))


# ---------------------------------------------------------------------------------------------
# releases


Installer = Callable[[VerifiedBundle, Path], None]


def bundled_pip_dir() -> Path | None:
    """A directory holding a pip wheel available offline (CPython's ensurepip bundle, or Debian's
    /usr/share/python-wheels), so every release gets its own pip and can run the next update."""
    import ensurepip

    for d in (Path(ensurepip.__file__).parent / "_bundled", Path("/usr/share/python-wheels")):
        if d.is_dir() and any(d.glob("pip-*.whl")):
            return d
    return None


def venv_installer(python: str = sys.executable) -> Installer:
    """Create a venv at the release dir and install the bundle's wheels (and pip) offline."""

    def install(bundle: VerifiedBundle, release: Path) -> None:
        pip_dir = bundled_pip_dir()
        venv_cmd = [python, "-m", "venv", str(release)]
        if pip_dir is not None:
            venv_cmd.insert(3, "--without-pip")  # pip comes from pip_dir below: faster
        subprocess.run(venv_cmd, check=True, capture_output=True, timeout=300)
        cmd = [
            python, "-m", "pip", "--python", str(release / "bin" / "python"), "install",
            "--no-index", "--no-cache-dir", "--disable-pip-version-check",
            "--no-warn-script-location", "--find-links", str(bundle.directory / "wheels"),
            f"{bundle.package}=={bundle.version}",
        ]  # fmt: skip
        if pip_dir is not None:
            cmd += ["--find-links", str(pip_dir), "pip"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise UpdateError("update.install", "installing the wheels failed: " + " / ".join(tail))

    return install


def current_release(root: Path) -> Path | None:
    link = root / "current"
    if not link.is_symlink():
        return None
    return (link.parent / os.readlink(link)).resolve()


def switch_current(root: Path, target: Path) -> None:
    """Point ``root/current`` at ``target`` atomically (rename of a fresh symlink)."""
    tmp = root / f".current.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        rel = os.path.relpath(target, root)
    except ValueError:
        rel = str(target)
    os.symlink(rel, tmp)
    os.replace(tmp, root / "current")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def wait_healthy(
    health_file: Path, version: str, since: float, timeout_s: float, poll_s: float = 0.2
) -> bool:
    """True once the health file, written after ``since`` (epoch s), says healthy for ``version``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fresh = health_file.stat().st_mtime >= since
        except OSError:
            fresh = False
        if fresh:
            record = read_health_file(health_file)
            if record and record.get("healthy") is True and record.get("version") == version:
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)


def run_hook(command: str, timeout_s: float = 120.0) -> None:
    try:
        proc = subprocess.run(
            shlex.split(command), capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        raise UpdateError(
            "update.restart", f"restart command {command!r} did not return within {timeout_s:g} s"
        ) from None
    if proc.returncode != 0:
        raise UpdateError(
            "update.restart",
            f"restart command {command!r} failed "
            f"(exit {proc.returncode}): {proc.stderr.strip()[-300:]}",
        )


@dataclass
class UpdateResult:
    status: str  # installed | rolled_back
    version: str
    previous: str | None
    message: str


def _release_version(health_version: str | None, release: Path | None) -> str | None:
    if release is None:
        return None
    manifest = release / "share" / "guetteur-release.json"
    try:
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return health_version


def apply_bundle(
    bundle_path: Path,
    root: Path,
    public_key: Ed25519PublicKey,
    health_file: Path,
    restart_command: str,
    health_timeout_s: float = 120.0,
    installer: Installer | None = None,
    supervisor_key: Ed25519PublicKey | None = None,
    permit: bytes | None = None,
) -> UpdateResult:
    """Verify, install, switch, restart, wait; roll back when the new release is not healthy.
    A bundle older than the anti-rollback floor or the running release is refused unless
    ``permit`` is a supervisor-signed downgrade permit for its exact version (ops.rollback)."""
    installer = installer or venv_installer()
    releases = root / "releases"
    releases.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".verify-", dir=releases) as work:
        verified = verify_bundle(bundle_path, public_key, Path(work))
        previous = current_release(root)
        target = releases / verified.version
        if previous is not None and previous == target.resolve():
            raise UpdateError("update.same", f"version {verified.version} is already running")
        running = _release_version(None, previous) if previous is not None else None
        allowed = rollback.check_direction(
            verified.version, rollback.read_floor(root), running, permit, supervisor_key
        )
        if allowed is not None:
            log.warning(
                "update %s: going back from %s, allowed by a supervisor's permit (%s)",
                verified.version, running, allowed.reason,
            )  # fmt: skip
        # Installed in place under its final name (a venv's scripts carry absolute paths, so it
        # cannot be renamed afterwards); `current` only points at it once it is complete.
        if target.exists():  # a failed earlier attempt of the same version
            shutil.rmtree(target)
        try:
            installer(verified, target)
            (target / "share").mkdir(exist_ok=True)
            shutil.copy2(Path(work) / MANIFEST, target / "share" / "guetteur-release.json")
        except UpdateError:
            shutil.rmtree(target, ignore_errors=True)
            raise
        except (OSError, subprocess.SubprocessError) as exc:
            shutil.rmtree(target, ignore_errors=True)
            raise UpdateError(
                "update.install", f"installing {verified.version} failed: {exc}"
            ) from None

    log.info("update %s installed in %s; switching from %s", verified.version, target, previous)
    since = time.time() - 0.01
    switch_current(root, target)
    run_hook(restart_command)
    if wait_healthy(health_file, verified.version, since, health_timeout_s):
        rollback.write_floor(root, verified.version)  # the floor moves only to what works
        _prune(releases, keep={target, previous})
        msg = f"updated to {verified.version}; the agent reported healthy"
        log.info(msg)
        return UpdateResult("installed", verified.version, previous.name if previous else None, msg)

    if previous is None:
        raise UpdateError(
            "update.unhealthy",
            f"{verified.version} did not report healthy within "
            f"{health_timeout_s:g} s and there is no previous release to go back to",
        )
    log.error(
        "update %s: agent not healthy within %g s; rolling back to %s",
        verified.version,
        health_timeout_s,
        previous.name,
    )
    since = time.time() - 0.01
    switch_current(root, previous)
    run_hook(restart_command)
    failed = releases / f"{verified.version}.failed"
    shutil.rmtree(failed, ignore_errors=True)
    os.replace(target, failed)
    back_version = _release_version(None, previous) or previous.name
    healthy_again = wait_healthy(health_file, back_version, since, health_timeout_s)
    msg = (
        f"{verified.version} did not report healthy within {health_timeout_s:g} s: rolled back "
        f"to {previous.name}" + ("" if healthy_again else " (which has not reported healthy yet)")
    )
    return UpdateResult("rolled_back", verified.version, previous.name, msg)


def _prune(releases: Path, keep: set[Path | None]) -> None:
    """Keep the running and previous releases plus the newest others, up to KEEP_RELEASES."""
    dirs = sorted(
        (d for d in releases.iterdir() if d.is_dir() and not d.name.startswith(".")),
        key=lambda d: d.stat().st_mtime,
        reverse=True,
    )
    kept = {k.resolve() for k in keep if k is not None}
    for d in dirs:
        if d.resolve() in kept:
            continue
        if len(kept) < KEEP_RELEASES and not d.name.endswith(".failed"):
            kept.add(d.resolve())
            continue
        shutil.rmtree(d, ignore_errors=True)
