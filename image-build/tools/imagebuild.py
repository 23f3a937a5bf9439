#!/usr/bin/env python3
"""Payload, lint, stage and verify steps of the gateway image (no root needed).

payload  reproducible tarball: the agent wheel (+ a wheelhouse of dependency wheels for the
         target when given), board profiles, udev rules, systemd files, a sha256 manifest
lint     the rpi-image-gen layer (metadata header + YAML), image configs, board profiles,
         udev rules, sysusers/tmpfiles syntax
stage    the rootfs tree the layer installs (units, sysusers, tmpfiles, drop-ins, udev, hw
         profiles, docs, payload, a factory release venv) under out/rootfs
verify   `systemd-analyze verify` of every unit against the staged tree (no output allowed),
         `systemd-analyze security --offline` exposure <= 2.0, sysusers dry run, the factory
         release runs, and the payload rebuilds bit for bit
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import yaml

LAYER = Path(__file__).resolve().parents[1] / "layer"
CONFIGS = Path(__file__).resolve().parents[1] / "config"
MAX_EXPOSURE = 2.0
HARDENED_UNITS = (
    "guetteur.service",
    "guetteur-provision.service",
    "guetteur-update.service",
    "guetteur-rearm.service",
)


class StepError(Exception):
    pass


def epoch() -> int:
    return int(os.environ.get("SOURCE_DATE_EPOCH", "1767225600"))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def agent_version(root: Path) -> str:
    text = (root / "agent" / "guetteur" / "__init__.py").read_text()
    m = re.search(r'^__version__ = "([^"]+)"', text, re.M)
    if not m:
        raise StepError("agent/guetteur/__init__.py has no __version__")
    return m.group(1)


# ------------------------------------------------------------------------------------ payload


def _copy_source(root: Path, dest: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        if (root / name).exists():
            shutil.copy2(root / name, dest / name)
    shutil.copytree(
        root / "agent",
        dest / "agent",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
    )


def build_wheel(root: Path, work: Path) -> Path:
    """The agent wheel, built here rather than by a build backend: the package is pure Python,
    and writing the zip ourselves makes it reproducible bit for bit (sorted entries, fixed
    timestamps) without needing setuptools' `wheel` or network access for build isolation."""
    import base64
    import tomllib
    import zipfile

    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    name, version = project["name"], project["version"]
    src = work / "src"
    _copy_source(root, src)
    pkg_root = src / "agent"
    dist = f"{name}-{version}.dist-info"
    entries: dict[str, bytes] = {}
    for f in sorted(pkg_root.rglob("*")):
        if f.is_file() and f.suffix not in (".pyc",) and "__pycache__" not in f.parts:
            entries[f.relative_to(pkg_root).as_posix()] = f.read_bytes()
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    if project.get("description"):
        meta.append(f"Summary: {project['description']}")
    if project.get("requires-python"):
        meta.append(f"Requires-Python: {project['requires-python']}")
    meta += [f"Requires-Dist: {d}" for d in project.get("dependencies", [])]
    for extra, deps in sorted(project.get("optional-dependencies", {}).items()):
        meta.append(f"Provides-Extra: {extra}")
        for d in deps:
            marker = f'extra == "{extra}"'
            d, _, existing = d.partition(";")
            full = f"({existing.strip()}) and {marker}" if existing.strip() else marker
            meta.append(f"Requires-Dist: {d.strip()}; {full}")
    entries[f"{dist}/METADATA"] = ("\n".join(meta) + "\n").encode()
    entries[f"{dist}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: guetteur-imagebuild\n"
        b"Root-Is-Purelib: true\nTag: py3-none-any\n"
    )
    scripts = project.get("scripts", {})
    if scripts:
        entries[f"{dist}/entry_points.txt"] = (
            "[console_scripts]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(scripts.items()))
        ).encode()
    record = []
    for arc, data in entries.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{arc},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    entries[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheels = work / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    out = wheels / f"{name}-{version}-py3-none-any.whl"
    import time as _time

    stamp = _time.gmtime(max(epoch(), 315532800))[:6]  # zip cannot go before 1980
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for arc, data in entries.items():  # RECORD last, as the spec asks
            info = zipfile.ZipInfo(arc, date_time=stamp)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    return out


def payload_files(root: Path, wheel: Path, wheelhouse: Path | None) -> dict[str, Path]:
    """Archive name → source file."""
    files: dict[str, Path] = {f"wheels/{wheel.name}": wheel}
    if wheelhouse:
        for w in sorted(wheelhouse.glob("*.whl")):
            if not w.name.startswith("guetteur-"):
                files[f"wheels/{w.name}"] = w
    for sub in ("hw", "systemd"):
        for p in sorted((root / sub).rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts:
                files[f"{sub}/{p.relative_to(root / sub)}"] = p
    for doc in ("technician.md", "updates.md"):
        if (root / "docs" / doc).exists():
            files[f"docs/{doc}"] = root / "docs" / doc
    return files


def write_tarball(files: dict[str, Path], extra: dict[str, bytes], out: Path) -> None:
    """Deterministic .tar.gz: sorted names, fixed owner/mtime/modes, gzip without a timestamp."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        entries = {**{k: None for k in files}, **{k: None for k in extra}}
        for name in sorted(entries):
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = epoch(), 0, 0, "root", "root"
            data = extra[name] if name in extra else files[name].read_bytes()
            info.mode = 0o755 if name in files and os.access(files[name], os.X_OK) else 0o644
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    os.replace(tmp, out)


def cmd_payload(root: Path, out: Path, wheelhouse: Path | None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    version = agent_version(root)
    wheel = build_wheel(root, out / "build")
    files = payload_files(root, wheel, wheelhouse)
    manifest = {
        "package": "guetteur",
        "version": version,
        "source_date_epoch": epoch(),
        "files": {name: sha256(p) for name, p in sorted(files.items())},
    }
    extra = {"MANIFEST.json": json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"}
    tarball = out / f"guetteur-payload-{version}.tar.gz"
    write_tarball(files, extra, tarball)
    unpacked = out / "payload"
    shutil.rmtree(unpacked, ignore_errors=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(unpacked, filter="data")
    print(
        f"payload {tarball.name} sha256 {sha256(tarball)} ({len(files)} files, "
        f"{'with' if wheelhouse else 'without'} a dependency wheelhouse)"
    )
    return tarball


# --------------------------------------------------------------------------------------- lint


def parse_layer_metadata(text: str) -> dict[str, str]:
    """rpi-image-gen layer header: `# X-Env-Key: value` lines between METABEGIN and METAEND,
    continuation lines start with `#  `."""
    if "# METABEGIN" not in text or "# METAEND" not in text:
        raise StepError("no # METABEGIN / # METAEND metadata block")
    block = text.split("# METABEGIN", 1)[1].split("# METAEND", 1)[0]
    meta: dict[str, str] = {}
    key = None
    for line in block.splitlines():
        if not line.strip() or line.strip() == "#":
            key = None
            continue
        if not line.startswith("#"):
            raise StepError(f"metadata line is not a comment: {line!r}")
        m = re.match(r"^# (X-Env-[A-Za-z0-9_-]+):\s?(.*)$", line)
        if m:
            key = m.group(1)
            meta[key] = m.group(2).strip()
        elif line.startswith("#  ") and key:
            meta[key] += " " + line[3:].strip()
        else:
            raise StepError(f"metadata line not understood: {line!r}")
    return meta


def lint_layer(path: Path) -> list[str]:
    problems: list[str] = []
    text = path.read_text()
    try:
        meta = parse_layer_metadata(text)
    except StepError as exc:
        return [f"{path.name}: {exc}"]
    for required in (
        "X-Env-Layer-Name",
        "X-Env-Layer-Desc",
        "X-Env-Layer-Version",
        "X-Env-Layer-Category",
    ):
        if not meta.get(required):
            problems.append(f"{path.name}: metadata {required} is missing")
    if meta.get("X-Env-Layer-Name") != path.stem:
        problems.append(f"{path.name}: X-Env-Layer-Name must be the file name ({path.stem})")
    prefix = meta.get("X-Env-VarPrefix")
    variables = {k[len("X-Env-Var-") :] for k in meta if k.startswith("X-Env-Var-")}
    base_vars = {v for v in variables if not re.search(r"-(Desc|Required|Valid|Set)$", v)}
    if base_vars and not prefix:
        problems.append(f"{path.name}: variables defined without X-Env-VarPrefix")
    for v in variables - base_vars:
        if v.rsplit("-", 1)[0] not in base_vars:
            problems.append(f"{path.name}: orphaned attribute X-Env-Var-{v}")
    for v in base_vars:
        if f"{v}-Desc" not in variables:
            problems.append(f"{path.name}: X-Env-Var-{v} has no -Desc")
    try:
        body = yaml.safe_load(text.split("\n---\n", 1)[1]) if "\n---\n" in text else None
    except yaml.YAMLError as exc:
        return [*problems, f"{path.name}: YAML body does not parse: {exc}"]
    if not isinstance(body, dict) or "mmdebstrap" not in body:
        problems.append(f"{path.name}: YAML body needs an mmdebstrap: mapping")
    else:
        hooks = body["mmdebstrap"].get("customize-hooks", [])
        for i, hook in enumerate(hooks):
            if not isinstance(hook, str):
                problems.append(f"{path.name}: customize-hooks[{i}] is not a string")
                continue
            proc = subprocess.run(["sh", "-n"], input=hook, capture_output=True, text=True)
            if proc.returncode != 0:
                problems.append(f"{path.name}: customize-hooks[{i}]: {proc.stderr.strip()}")
    return problems


def lint_udev(path: Path) -> list[str]:
    token = re.compile(r'^\s*[A-Z_]+(\{[^}]*\})?\s*(==|!=|=|\+=|-=|:=)\s*"[^"]*"\s*$')
    problems = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        for part in re.split(r',(?=(?:[^"]*"[^"]*")*[^"]*$)', line):
            if not token.match(part):
                problems.append(f'{path.name}:{n}: not a KEY op "value" pair: {part.strip()!r}')
    return problems


def lint_tmpfiles(path: Path) -> list[str]:
    problems = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) < 2 or fields[0].rstrip("!+-=~^") not in set("fFwdDeLcbpxXrRzZtThHaAqQv"):
            problems.append(f"{path.name}:{n}: unknown tmpfiles type {fields[0]!r}")
        elif not fields[1].startswith("/"):
            problems.append(f"{path.name}:{n}: path must be absolute")
    return problems


def cmd_lint(root: Path) -> None:
    sys.path.insert(0, str(root / "agent"))
    from guetteur.hwprofile import ProfileError, load_profile_file

    problems: list[str] = []
    for layer in sorted(LAYER.glob("*.yaml")):
        problems += lint_layer(layer)
    for cfg in sorted(CONFIGS.glob("*.yaml")):
        data = yaml.safe_load(cfg.read_text())
        layers = data.get("layer", {}) if isinstance(data, dict) else {}
        names = layers.values() if isinstance(layers, dict) else layers
        if "guetteur" not in names:
            problems.append(f"{cfg.name}: does not include the guetteur layer")
    matches: dict[str, str] = {}
    for prof in sorted((root / "hw" / "profiles").glob("*.yaml")):
        try:
            p = load_profile_file(prof)
        except ProfileError as exc:
            problems.append(str(exc))
            continue
        if p.board != prof.stem:
            problems.append(f"{prof.name}: board {p.board!r} differs from the file name")
        for m in p.match:
            if m in matches:
                problems.append(f"{prof.name}: match {m!r} also in {matches[m]}")
            matches[m] = prof.name
    for rules in sorted((root / "hw" / "udev").glob("*.rules")):
        problems += lint_udev(rules)
    for conf in sorted((root / "systemd" / "tmpfiles.d").glob("*.conf")):
        problems += lint_tmpfiles(conf)
    with tempfile.TemporaryDirectory() as tmp:
        for conf in sorted((root / "systemd" / "sysusers.d").glob("*.conf")):
            proc = subprocess.run(
                ["systemd-sysusers", "--dry-run", f"--root={tmp}", str(conf)],
                capture_output=True,
                text=True,
            )
            bad = [
                ln
                for ln in proc.stderr.splitlines()
                if not ln.startswith(("Creating", "Would ", "Adding"))
            ]
            if proc.returncode != 0 or bad:
                problems.append(
                    f"{conf.name}: systemd-sysusers: {' / '.join(bad) or proc.returncode}"
                )
    if problems:
        raise StepError("lint found problems:\n  " + "\n  ".join(problems))
    print("lint: layer, configs, board profiles, udev rules, tmpfiles, sysusers OK")


# -------------------------------------------------------------------------------------- stage


def _install(src: Path, dest: Path, mode: int = 0o644) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    dest.chmod(mode)


def cmd_stage(root: Path, out: Path, update_pubkey: Path | None) -> Path:
    payload = out / "payload"
    if not (payload / "MANIFEST.json").exists():
        raise StepError("no payload: run `make payload` first")
    rootfs = out / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    units = rootfs / "usr/lib/systemd/system"
    for unit in sorted((root / "systemd" / "system").iterdir()):
        _install(unit, units / unit.name)
    for sub, dest in (
        ("sysusers.d", "usr/lib/sysusers.d"),
        ("tmpfiles.d", "usr/lib/tmpfiles.d"),
        ("journald.conf.d", "etc/systemd/journald.conf.d"),
        ("system.conf.d", "etc/systemd/system.conf.d"),
    ):
        for f in sorted((root / "systemd" / sub).glob("*.conf")):
            _install(f, rootfs / dest / f.name)
    for rules in sorted((root / "hw" / "udev").glob("*.rules")):
        _install(rules, rootfs / "usr/lib/udev/rules.d" / rules.name)
    for prof in sorted((root / "hw" / "profiles").glob("*.yaml")):
        _install(prof, rootfs / "usr/share/guetteur/hw/profiles" / prof.name)
    for doc in sorted((payload / "docs").glob("*.md")) if (payload / "docs").is_dir() else []:
        _install(doc, rootfs / "usr/share/doc/guetteur" / doc.name)
    if update_pubkey:
        _install(update_pubkey, rootfs / "usr/share/guetteur/update-signing.pub")
    # image-specific files (data partition mounts) from the layer's overlay
    overlay = LAYER / "guetteur.d" / "overlay"
    for f in sorted(overlay.rglob("*")):
        if f.is_file():
            _install(f, rootfs / f.relative_to(overlay), 0o755 if os.access(f, os.X_OK) else 0o644)
    shutil.copytree(payload / "wheels", rootfs / "usr/lib/guetteur/wheels")
    _install(payload / "MANIFEST.json", rootfs / "usr/lib/guetteur/MANIFEST.json")

    # The factory release: in the image the layer builds it in the target chroot from the full
    # wheelhouse; here a host venv with the agent wheel alone proves the wheel installs offline
    # and provides the `guetteur` entry point the units start.
    factory = rootfs / "usr/lib/guetteur/factory"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(factory)], check=True)
    wheel = next((rootfs / "usr/lib/guetteur/wheels").glob("guetteur-*.whl"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(factory / "bin/python"),
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--disable-pip-version-check",
            str(wheel),
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise StepError(f"the agent wheel does not install offline: {proc.stderr[-1500:]}")
    manifest = json.loads((payload / "MANIFEST.json").read_text())
    (factory / "share").mkdir(exist_ok=True)
    (factory / "share/guetteur-release.json").write_text(
        json.dumps({"version": manifest["version"], "factory": True}) + "\n"
    )
    # first-boot state: what tmpfiles.d creates (L /opt/guetteur/current → the factory release)
    for d in ("etc/guetteur", "var/lib/guetteur", "opt/guetteur/releases", "data", "boot/firmware"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    (rootfs / "opt/guetteur/current").symlink_to("/usr/lib/guetteur/factory")
    print(f"staged rootfs tree in {rootfs}")
    return rootfs


# ------------------------------------------------------------------------------------- verify


def _verify_root(rootfs: Path, work: Path) -> Path:
    """The staged tree on top of the host's own units (targets like sysinit.target live there)."""
    vroot = work / "verify-root"
    shutil.rmtree(vroot, ignore_errors=True)
    for host_dir in ("/usr/lib/systemd/system", "/lib/systemd/system"):
        if Path(host_dir).is_dir():
            shutil.copytree(
                host_dir, vroot / "usr/lib/systemd/system", symlinks=True, dirs_exist_ok=True
            )
            break
    shutil.copytree(rootfs, vroot, symlinks=True, dirs_exist_ok=True)
    # Base-OS programs our units run (mkdir, systemctl): the image's base layers provide them;
    # here the host's copies stand in so that the executable checks see them.
    for unit in (rootfs / "usr/lib/systemd/system").iterdir():
        for m in re.finditer(r"^Exec\w*=[-@:+!]*(/\S+)", unit.read_text(), re.M):
            exe = m.group(1)
            target = vroot / exe.lstrip("/")
            if not target.exists() and not target.is_symlink() and Path(exe).is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(exe, target)
    return vroot


def exposure(unit_file: Path) -> float:
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit_file)],
        capture_output=True,
        text=True,
    )
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout + proc.stderr)
    if not m:
        raise StepError(
            f"systemd-analyze security gave no score for {unit_file.name}: "
            f"{(proc.stdout + proc.stderr)[-500:]}"
        )
    return float(m.group(1))


def cmd_verify(root: Path, out: Path) -> None:
    rootfs = out / "rootfs"
    if not rootfs.is_dir():
        raise StepError("no staged tree: run `make stage` first")
    problems: list[str] = []
    vroot = _verify_root(rootfs, out)
    ours = sorted(p.name for p in (rootfs / "usr/lib/systemd/system").iterdir())
    for unit in ours:
        proc = subprocess.run(
            ["systemd-analyze", "verify", f"--root={vroot}", unit], capture_output=True, text=True
        )
        if proc.returncode != 0 or proc.stderr.strip():
            problems.append(
                f"systemd-analyze verify {unit}: {proc.stderr.strip() or proc.returncode}"
            )
    scores = {}
    for unit in HARDENED_UNITS:
        scores[unit] = exposure(rootfs / "usr/lib/systemd/system" / unit)
        if scores[unit] > MAX_EXPOSURE:
            problems.append(f"{unit}: exposure {scores[unit]} > {MAX_EXPOSURE}")
    proc = subprocess.run(
        ["systemd-sysusers", "--dry-run", f"--root={vroot}"], capture_output=True, text=True
    )
    if proc.returncode != 0 or "guetteur" not in proc.stderr + proc.stdout:
        problems.append(f"systemd-sysusers on the staged tree: {proc.stderr.strip()[-300:]}")
    factory_py = rootfs / "usr/lib/guetteur/factory/bin/python"
    proc = subprocess.run(
        [str(factory_py), "-c", "import guetteur; print(guetteur.__version__)"],
        capture_output=True,
        text=True,
    )
    version = agent_version(root)
    if proc.stdout.strip() != version:
        problems.append(f"factory release does not import guetteur {version}: {proc.stderr[-300:]}")
    link = rootfs / "opt/guetteur/current"
    target = os.readlink(link) if link.is_symlink() else ""
    if not os.access(rootfs / target.lstrip("/") / "bin/guetteur", os.X_OK):
        problems.append(
            f"opt/guetteur/current ({target or 'missing'}) has no executable "
            "bin/guetteur in the staged tree"
        )
    # reproducibility: the same sources give the same payload, bit for bit
    tarball = out / f"guetteur-payload-{version}.tar.gz"
    with tempfile.TemporaryDirectory() as tmp:
        wheelhouse = None
        extra = [
            p
            for p in (out / "payload" / "wheels").glob("*.whl")
            if not p.name.startswith("guetteur-")
        ]
        if extra:
            wheelhouse = Path(tmp) / "wh"
            wheelhouse.mkdir()
            for p in extra:
                shutil.copy2(p, wheelhouse / p.name)
        again = cmd_payload(root, Path(tmp) / "out", wheelhouse)
        if sha256(again) != sha256(tarball):
            problems.append("payload is not reproducible: a rebuild differs")
    if problems:
        raise StepError("verify found problems:\n  " + "\n  ".join(problems))
    print(
        "verify: "
        + ", ".join(f"{u} exposure {s}" for u, s in scores.items())
        + f"; {len(ours)} units verified; payload reproducible"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("step", choices=["payload", "lint", "stage", "verify"])
    parser.add_argument("--root", type=Path, required=True, help="the repository checkout")
    parser.add_argument("--out", type=Path, default=None, help="output directory")
    parser.add_argument(
        "--wheelhouse",
        type=Path,
        default=None,
        help="dependency wheels for the target (aarch64) to ship in the payload",
    )
    parser.add_argument(
        "--update-pubkey",
        type=Path,
        default=None,
        help="Ed25519 public key installed as /usr/share/guetteur/update-signing.pub",
    )
    args = parser.parse_args()
    root = args.root.resolve()
    out = (args.out or root / "image-build" / "out").resolve()
    try:
        if args.step == "payload":
            cmd_payload(root, out, args.wheelhouse)
        elif args.step == "lint":
            cmd_lint(root)
        elif args.step == "stage":
            cmd_stage(root, out, args.update_pubkey)
        else:
            cmd_verify(root, out)
    except StepError as exc:
        print(f"{args.step}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
