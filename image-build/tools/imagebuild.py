#!/usr/bin/env python3
"""Payload, lint, stage and verify steps of the gateway image (no root needed).

payload  reproducible tarball: the agent wheel (+ a wheelhouse of dependency wheels for the
         target when given), board profiles, udev rules, systemd files, a sha256 manifest
lint     the rpi-image-gen layers (metadata header + YAML): the `guetteur` app layer and the
         `image-guetteur` disk layout (its genimage template, preimage hook and partition
         set-up script, and that its partition labels and mount points match the mount units,
         the grow script and the board profiles), image configs, board profiles, udev rules,
         sysusers/tmpfiles syntax
stage    the rootfs tree the layer installs (units, sysusers, tmpfiles, drop-ins, udev, hw
         profiles, docs, payload, a factory release venv) under out/rootfs
verify   `systemd-analyze verify` of every unit against the staged tree (no output allowed),
         `systemd-analyze security --offline` exposure <= 2.0, sysusers dry run, the factory
         release runs, the payload rebuilds bit for bit, and (when genimage is installed) a
         miniature card image built by genimage from the layout's template and the staged tree:
         partition table, labels, fstab, kernel command line, first-boot growth of the data
         partition
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

import genimage_cfg as gi
import yaml

LAYER = Path(__file__).resolve().parents[1] / "layer"
CONFIGS = Path(__file__).resolve().parents[1] / "config"
# Image (disk layout) layers: rpi-image-gen finds them under <source dir>/image/.
IMAGE_LAYOUTS = Path(__file__).resolve().parents[1] / "image"
LAYOUT = IMAGE_LAYOUTS / "guetteur"
LAYOUT_LAYER = LAYOUT / "image-guetteur.yaml"
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
    from guetteur.ops.hwprofile import ProfileError, load_profile_file

    problems: list[str] = []
    for layer in sorted(LAYER.glob("*.yaml")):
        problems += lint_layer(layer)
    problems += lint_image_layout(root)
    for cfg in sorted(CONFIGS.glob("*.yaml")):
        data = yaml.safe_load(cfg.read_text())
        layers = data.get("layer", {}) if isinstance(data, dict) else {}
        names = layers.values() if isinstance(layers, dict) else layers
        if "guetteur" not in names:
            problems.append(f"{cfg.name}: does not include the guetteur layer")
        problems += lint_image_config(cfg, data if isinstance(data, dict) else {})
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
    print(
        "lint: app layer, image layout (metadata, genimage template, labels vs mount units),"
        " configs, board profiles, udev rules, tmpfiles, sysusers OK"
    )


# ------------------------------------------------------------------------------- image layout

# Variables the image-base layer of rpi-image-gen declares (prefix `image`); a layout layer may
# use them without declaring them.
IMAGE_BASE_VARS = {
    "suffix",
    "compression",
    "version",
    "name",
    "pmap",
    "pmap_schema",
    "outputdir",
    "provider",
    "assetdir",
    "rootfs_type",
}
# Phases rpi-image-gen runs standalone hooks in (`<layer-stem>.d/hooks/<phase>*`).
HOOK_PHASES = (
    "prebuild",
    "setup",
    "extract",
    "essential",
    "customize",
    "cleanup",
    "postbuild",
    "sbom",
    "preimage",
    "postimage",
    "finalize",
    "deploy",
)
SET_POLICIES = {"y", "n", "yes", "no", "true", "false", "1", "0"} | {
    "immediate",
    "lazy",
    "force",
    "skip",
}
# Partition kinds the layout's set-up script knows, and where each is mounted.
LAYOUT_PARTITIONS = (("boot", "vfat", "/boot/firmware"), ("root", "ext4", "/"))
SAMPLE_SIGNATURE = "0x1A2B3C4D"


def layer_variables(meta: dict[str, str]) -> dict[str, dict[str, str]]:
    """X-Env-Var-<name>[-Attr] fields grouped by variable: {name: {"": default, "Desc": ...}}."""
    out: dict[str, dict[str, str]] = {}
    for key, val in meta.items():
        if not key.startswith("X-Env-Var-"):
            continue
        rest = key[len("X-Env-Var-") :]
        m = re.match(r"^(.*)-(Desc|Description|Required|Valid|Set|Triggers|Conflicts)$", rest)
        name, attr = (m.group(1), m.group(2)) if m else (rest, "")
        out.setdefault(name, {})["Desc" if attr == "Description" else attr] = val
    return out


def valid_default(rule: str, value: str) -> bool:
    """Whether a variable's default satisfies its -Valid rule (the rule kinds we use)."""
    if "${" in value:  # placeholders (${DIRECTORY}) are expanded by rpi-image-gen
        return True
    if rule == "size":
        return re.fullmatch(r"\d+([kKmMgGsS]|%)?", value) is not None
    if rule == "bool":
        return value.lower() in {"y", "n", "yes", "no", "true", "false", "1", "0"}
    if rule.startswith("regex:"):
        return re.search(rule[len("regex:") :], value) is not None
    if rule.startswith("keywords:"):
        return value in rule[len("keywords:") :].split(",")
    if rule in ("string", "dir", "file"):
        return value != ""
    if rule == "string-or-empty":
        return True
    if "," in rule:
        return value in [v for v in rule.split(",") if v]
    return True


def lint_layer_variables(name: str, meta: dict[str, str]) -> list[str]:
    problems = []
    if not re.fullmatch(
        r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)", meta.get("X-Env-Layer-Version", "")
    ):
        problems.append(f"{name}: X-Env-Layer-Version must be major.minor.patch")
    for var, attrs in layer_variables(meta).items():
        if "" not in attrs:
            continue  # orphans are reported by lint_layer
        for attr in ("Valid", "Set"):
            if attr not in attrs:
                problems.append(f"{name}: X-Env-Var-{var} has no -{attr}")
        if attrs.get("Set", "y").lower() not in SET_POLICIES:
            problems.append(f"{name}: X-Env-Var-{var}-Set: {attrs['Set']!r} is not a set policy")
        rule = attrs.get("Valid", "")
        if rule and attrs[""] and not valid_default(rule, attrs[""]):
            problems.append(f"{name}: X-Env-Var-{var} default {attrs['']!r} fails -Valid {rule}")
    return problems


def unit_settings_of(path: Path) -> dict[str, str]:
    """Last value of each Key= of a unit file (enough for the keys compared here)."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", line.strip())
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def shell_assignments(text: str) -> dict[str, str]:
    return dict(re.findall(r"^([A-Z_]+)=(\S+)$", text, re.M))


def template_placeholders(text: str) -> set[str]:
    body = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    return set(re.findall(r"<([A-Z_]+)>", body))


def hook_substitutions(text: str) -> set[str]:
    return set(re.findall(r"s\|<([A-Z_]+)>\|", text))


def render_template(text: str, values: dict[str, str]) -> str:
    return re.sub(r"<([A-Z_]+)>", lambda m: values.get(m.group(1), m.group(0)), text)


def layout_expectations(root: Path) -> tuple[dict[str, str], list[str]]:
    """The data partition's label and mount point as the overlay's mount units declare them,
    checked against the bind mounts, the grow script and unit, and the board profiles."""
    units = LAYER / "guetteur.d" / "overlay" / "usr/lib/systemd/system"
    problems: list[str] = []
    data = unit_settings_of(units / "data.mount")
    m = re.fullmatch(r"/dev/disk/by-label/(\S+)", data.get("What", ""))
    if not m:
        return {}, ["data.mount: What= must be /dev/disk/by-label/<LABEL>"]
    label, where = m.group(1), data.get("Where", "")
    if data.get("Type") != "ext4":
        problems.append(f"data.mount: Type={data.get('Type')} but the data partition is ext4")
    for unit in sorted(units.glob("*.mount")):
        s = unit_settings_of(unit)
        expected = s.get("Where", "").strip("/").replace("-", "\\x2d").replace("/", "-")
        if unit.stem != expected:
            problems.append(
                f"{unit.name}: Where={s.get('Where')} needs the unit name {expected}.mount"
            )
        if unit.name != "data.mount" and not s.get("What", "").startswith(where + "/"):
            problems.append(f"{unit.name}: binds {s.get('What')}, not a directory under {where}")
    grow = LAYER / "guetteur.d/overlay/usr/lib/guetteur/grow-data-partition"
    gvars = shell_assignments(grow.read_text())
    if gvars.get("LABEL") != label or gvars.get("MOUNTPOINT") != where:
        problems.append(
            f"grow-data-partition: LABEL={gvars.get('LABEL')} MOUNTPOINT={gvars.get('MOUNTPOINT')}"
            f", data.mount says {label} on {where}"
        )
    gunit = unit_settings_of(units / "guetteur-data-grow.service")
    marker = gvars.get("MARKER", "").replace("$MOUNTPOINT", where)
    if gunit.get("ConditionPathExists") != f"!{marker}":
        problems.append(
            f"guetteur-data-grow.service: ConditionPathExists={gunit.get('ConditionPathExists')}"
            f" but the script leaves the marker {marker}"
        )
    if "data.mount" not in gunit.get("Requires", "") or "data.mount" not in gunit.get("After", ""):
        problems.append("guetteur-data-grow.service: needs Requires= and After=data.mount")
    for prof in sorted((root / "hw" / "profiles").glob("*.yaml")):
        storage = (yaml.safe_load(prof.read_text()) or {}).get("storage") or {}
        if storage.get("partition_label") not in (None, label):
            problems.append(
                f"hw/profiles/{prof.name}: partition_label {storage.get('partition_label')}"
                f" differs from data.mount's {label}"
            )
    return {"label": label, "mountpoint": where}, problems


def check_layout_config(cfg: gi.Section, expect: dict[str, str], setup_text: str) -> list[str]:
    """The rendered genimage config describes the card the rest of the image relies on."""
    problems: list[str] = []
    cards = [s for s in cfg.sections if s.kind == "image" and s.sub("hdimage")]
    if len(cards) != 1:
        return [f"the layout must define exactly one disk image (hdimage), found {len(cards)}"]
    card, hd = cards[0], cards[0].sub("hdimage")[0]
    if hd.text("partition-table-type") != "mbr":
        problems.append("the card's partition table must be mbr (PARTUUID=<signature>-NN)")
    if not re.fullmatch(r"0x[0-9a-fA-F]{8}", hd.text("disk-signature") or ""):
        problems.append("hdimage disk-signature must be the rendered 0x + 8 hex digits")
    parts = card.sub("partition")
    names = [p.title for p in parts]
    if names != ["boot", "root", "data"]:
        problems.append(
            f"partitions must be boot, root, data in this order (data last, to grow), got {names}"
        )
        return problems
    numbers = {n: i + 1 for i, n in enumerate(names)}
    wanted = {
        "boot": ("0x0C", "vfat", "/boot/firmware", None),
        "root": ("0x83", "ext4", "/", None),
        "data": ("0x83", "ext4", expect["mountpoint"], expect["label"]),
    }
    for part in parts:
        ptype, fstype, mountpoint, label = wanted[part.title or ""]
        if int(part.text("partition-type") or "0", 16) != int(ptype, 16):
            problems.append(
                f"partition {part.title}: partition-type {part.text('partition-type')}, want {ptype}"
            )
        img = gi.image(cfg, part.text("image") or "")
        kind = gi.image_type(img) if img else None
        if img is None or kind is None:
            continue
        if kind.kind != fstype:
            problems.append(f"partition {part.title}: {kind.kind} file system, want {fstype}")
        if img.text("mountpoint") != mountpoint:
            problems.append(
                f"partition {part.title}: mountpoint {img.text('mountpoint')}, want {mountpoint}"
            )
        if label is not None and kind.text("label") != label:
            problems.append(
                f"partition {part.title}: label {kind.text('label')!r} but data.mount mounts "
                f"/dev/disk/by-label/{label}"
            )
        if not img.text("size"):
            problems.append(f"partition {part.title}: image {img.title} has no size")
        pre = img.text("exec-pre") or ""
        if part.title in ("boot", "root") and not re.search(
            rf"setup-partition\.sh {part.title} 0x", pre
        ):
            problems.append(
                f"partition {part.title}: exec-pre must run setup-partition.sh {part.title}"
            )
    if parts[0].text("bootable") != "true":
        problems.append("partition boot must be bootable = true")
    # The set-up script names boot and root by PARTUUID=<signature>-NN: NN must be their numbers.
    fstab = dict(
        (mp, int(n)) for n, mp in re.findall(r"PARTUUID=\$partuuid-(\d\d)\s+(\S+)", setup_text)
    )
    for part_name, _fs, mountpoint in LAYOUT_PARTITIONS:
        if fstab.get(mountpoint) != numbers[part_name]:
            problems.append(
                f"setup-partition.sh: fstab gives {mountpoint} partition {fstab.get(mountpoint)}, "
                f"the layout makes it partition {numbers[part_name]}"
            )
    if expect["mountpoint"] in fstab:
        problems.append(
            f"setup-partition.sh: {expect['mountpoint']} must not be in fstab (data.mount mounts it)"
        )
    m = re.search(r"root=PARTUUID=%s-(\d\d)", setup_text)
    if not m or int(m.group(1)) != numbers["root"]:
        problems.append(
            "setup-partition.sh: kernel command line root=PARTUUID=...-NN is not the root partition"
        )
    return problems


def lint_image_layout(root: Path) -> list[str]:
    name = LAYOUT_LAYER.name
    problems = lint_layer(LAYOUT_LAYER)
    try:
        meta = parse_layer_metadata(LAYOUT_LAYER.read_text())
        app_meta = parse_layer_metadata((LAYER / "guetteur.yaml").read_text())
    except StepError as exc:
        return [*problems, f"{name}: {exc}"]
    problems += lint_layer_variables(name, meta)
    if meta.get("X-Env-Layer-Category") != "image":
        problems.append(f"{name}: X-Env-Layer-Category must be image")
    if "image" not in re.split(r"[\s,]+", meta.get("X-Env-Layer-Provides", "")):
        problems.append(f"{name}: X-Env-Layer-Provides must include image")
    requires = re.split(r"[\s,]+", meta.get("X-Env-Layer-Requires", ""))
    for needed in ("image-base", app_meta.get("X-Env-Layer-Name", "guetteur")):
        if needed not in requires:
            problems.append(f"{name}: X-Env-Layer-Requires must include {needed}")
    if meta.get("X-Env-VarPrefix") != "image":
        problems.append(f"{name}: X-Env-VarPrefix must be image (image layers set IGconf_image_*)")
    declared = {
        f"IGconf_image_{v}" for v in layer_variables(meta) | dict.fromkeys(IMAGE_BASE_VARS)
    } | {f"IGconf_{app_meta.get('X-Env-VarPrefix')}_{v}" for v in layer_variables(app_meta)}
    for var in re.split(r"[\s,]+", meta.get("X-Env-VarRequires", "").strip()):
        if var and var not in declared:
            problems.append(f"{name}: X-Env-VarRequires {var} is declared by none of our layers")

    layout_dir = LAYOUT_LAYER.parent
    template = layout_dir / "genimage.cfg.in"
    setup = layout_dir / "setup-partition.sh"
    hooks_dir = layout_dir / f"{LAYOUT_LAYER.stem}.d" / "hooks"
    hooks = sorted(hooks_dir.iterdir()) if hooks_dir.is_dir() else []
    for script in [*hooks, setup]:
        if not os.access(script, os.X_OK):
            problems.append(
                f"{script.relative_to(layout_dir)}: not executable (rpi-image-gen / genimage skip or fail)"
            )
        if script in hooks and not script.name.startswith(HOOK_PHASES):
            problems.append(
                f"{script.name}: hook name must start with a phase ({', '.join(HOOK_PHASES)})"
            )
        proc = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        if proc.returncode != 0:
            problems.append(f"{script.name}: {proc.stderr.strip()}")
    preimage = [h for h in hooks if h.name.startswith("preimage")]
    if len(preimage) != 1:
        return [
            *problems,
            f"{name}: needs exactly one preimage hook rendering genimage.cfg.in, has {len(preimage)}",
        ]
    hook_text, setup_text = preimage[0].read_text(), setup.read_text()
    for script_text, script_name in ((hook_text, preimage[0].name), (setup_text, setup.name)):
        for var in sorted(set(re.findall(r"IGconf_[a-z0-9]+_[a-z0-9_]+", script_text)) - declared):
            problems.append(
                f"{script_name}: uses {var}, which no layer of ours or image-base declares"
            )
    text = template.read_text()
    used, substituted = template_placeholders(text), hook_substitutions(hook_text)
    if used - substituted:
        problems.append(
            f"genimage.cfg.in: {sorted(used - substituted)} not substituted by {preimage[0].name}"
        )
    if substituted - used:
        problems.append(
            f"{preimage[0].name}: substitutes {sorted(substituted - used)}, absent from the template"
        )

    variables = layer_variables(meta)
    sample = {
        "IMAGE_NAME": "guetteur-lint",
        "IMAGE_SUFFIX": "img",
        "BOOT_SIZE": variables.get("boot_part_size", {}).get("", ""),
        "ROOT_SIZE": variables.get("root_part_size", {}).get("", ""),
        "DATA_SIZE": variables.get("data_part_size", {}).get("", ""),
        "DISK_SIGNATURE": SAMPLE_SIGNATURE,
        "SETUP": str(setup),
    }
    try:
        cfg = gi.parse(render_template(text, sample))
    except gi.ConfigError as exc:
        return [*problems, f"genimage.cfg.in does not parse: {exc}"]
    problems += [f"genimage.cfg.in: {p}" for p in gi.validate(cfg)]
    expect, more = layout_expectations(root)
    problems += more
    if expect:
        problems += [f"genimage.cfg.in: {p}" for p in check_layout_config(cfg, expect, setup_text)]
    return problems


def lint_image_config(cfg_path: Path, data: dict[str, object]) -> list[str]:
    """`image:` of an rpi-image-gen config: our layout, and only variables it declares, valid."""
    problems = []
    meta = parse_layer_metadata(LAYOUT_LAYER.read_text())
    variables = layer_variables(meta)
    image = data.get("image")
    if not isinstance(image, dict):
        return [f"{cfg_path.name}: no image: section"]
    if image.get("layer") != meta["X-Env-Layer-Name"]:
        problems.append(
            f"{cfg_path.name}: image layer {image.get('layer')!r}; the gateway needs "
            f"{meta['X-Env-Layer-Name']} (data partition GTDATA)"
        )
    for key, value in image.items():
        if key in ("layer", "name") or key in IMAGE_BASE_VARS:
            continue
        if key not in variables:
            problems.append(
                f"{cfg_path.name}: image.{key} is not a variable of {LAYOUT_LAYER.name}"
            )
        elif not valid_default(variables[key].get("Valid", ""), str(value)):
            problems.append(
                f"{cfg_path.name}: image.{key} = {value!r} fails {variables[key].get('Valid')}"
            )
    return problems


# --------------------------------------------------------------------- miniature card image

# Host tools the miniature card check needs (Debian package in parentheses).
CARD_TOOLS = {
    "genimage": "genimage",
    "mkdosfs": "dosfstools",
    "mcopy": "mtools",
    "mtype": "mtools",
    "sfdisk": "fdisk",
    "debugfs": "e2fsprogs",
    "resize2fs": "e2fsprogs",
}
SECTOR = 512
MIB = 1 << 20


def mbr_partitions(disk: Path) -> tuple[int, list[dict[str, int]]]:
    """(disk signature, primary partitions) read straight from an MBR."""
    with disk.open("rb") as f:
        mbr = f.read(SECTOR)
    if mbr[510:512] != b"\x55\xaa":
        raise StepError(f"{disk.name}: no MBR boot signature")
    parts = []
    for i in range(4):
        e = mbr[446 + 16 * i : 462 + 16 * i]
        count = int.from_bytes(e[12:16], "little")
        if count:
            parts.append(
                {
                    "number": i + 1,
                    "bootable": e[0] == 0x80,
                    "type": e[4],
                    "start": int.from_bytes(e[8:12], "little"),
                    "sectors": count,
                }
            )
    return int.from_bytes(mbr[440:444], "little"), parts


def fs_label(disk: Path, start_sector: int) -> tuple[str, str]:
    """(file system, label) of the partition starting at start_sector: FAT32 or ext2/3/4."""
    with disk.open("rb") as f:
        f.seek(start_sector * SECTOR)
        head = f.read(2048)
    if head[0x52:0x5A] == b"FAT32   ":
        return "vfat", head[0x47:0x52].decode("ascii", "replace").rstrip()
    if head[1024 + 0x38 : 1024 + 0x3A] == b"\x53\xef":
        return "ext4", head[1024 + 0x78 : 1024 + 0x88].split(b"\0")[0].decode("utf-8", "replace")
    return "unknown", ""


def fstab_entries(text: str) -> dict[str, list[str]]:
    """mount point -> [spec, mount point, type, options, ...]"""
    out = {}
    for line in text.splitlines():
        fields = line.split()
        if fields and not fields[0].startswith("#") and len(fields) >= 4:
            out[fields[1]] = fields
    return out


def debugfs_names(fs_image: Path, directory: str) -> list[str]:
    """Entry names of a directory inside an ext4 image (debugfs `ls -p`: /ino/mode/uid/gid/name/...)."""
    out = _run(["debugfs", "-R", f"ls -p {directory}", str(fs_image)]).stdout
    return sorted(ln.split("/")[5] for ln in out.splitlines() if ln.count("/") >= 6)


def _run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def tree_bytes(tree: Path) -> int:
    return sum(p.lstat().st_size for p in tree.rglob("*") if p.is_file() and not p.is_symlink())


def make_card(
    tree: Path, card: Path, name: str, sizes: dict[str, int], signature: str, readonly: str
) -> Path:
    """A card image from a finished root tree (with /boot/firmware/cmdline.txt) by the layout's
    own preimage hook and genimage template (its set-up script writes fstab and the kernel
    command line): the one way both the miniature card of `verify` and the VM image are made.
    ``sizes`` in MiB, multiples of 4. Returns card/out/<name>.img; raises StepError."""
    gin, gout = card / "in", card / "out"
    gin.mkdir(parents=True)
    gout.mkdir(parents=True)
    env = dict(
        os.environ,
        LAYER_DIR=str(LAYOUT),
        IGconf_image_name=name,
        IGconf_image_suffix="img",
        IGconf_image_boot_part_size=f"{sizes['boot']}M",
        IGconf_image_root_part_size=f"{sizes['root']}M",
        IGconf_image_data_part_size=f"{sizes['data']}M",
        IGconf_image_disksig=signature,
        IGconf_guetteur_readonly_root=readonly,
    )
    hook = next((LAYOUT / f"{LAYOUT_LAYER.stem}.d" / "hooks").glob("preimage*"))
    proc = _run([str(hook), str(tree), str(gin)], env)
    if proc.returncode != 0:
        raise StepError(f"{hook.name} failed: {(proc.stderr or proc.stdout).strip()[-500:]}")
    proc = _run(
        [
            "genimage",
            "--rootpath",
            str(tree),
            "--tmppath",
            str(card / "tmp"),
            "--inputpath",
            str(gout),
            "--outputpath",
            str(gout),
            "--config",
            str(gin / "genimage.cfg"),
        ],
        env,
    )
    disk = gout / f"{name}.img"
    if proc.returncode != 0 or not disk.is_file():
        errors = [ln for ln in proc.stderr.splitlines() if not ln.startswith("INFO:")]
        raise StepError(f"genimage failed on the rendered template: {' / '.join(errors[-6:])}")
    return disk


def verify_card_image(root: Path, rootfs: Path, work: Path) -> tuple[list[str], str]:
    """Builds a miniature card with genimage from the layout's template, rendered by the layout's
    own preimage hook from the staged tree, and checks what the box will boot from: partition
    table, file system labels, /etc/fstab and the kernel command line the set-up script wrote,
    an empty data partition, and the first-boot growth of the data partition (partition table
    and ext4). Returns (problems, summary)."""
    missing = sorted({pkg for tool, pkg in CARD_TOOLS.items() if shutil.which(tool) is None})
    if missing:
        return [], f"card image SKIPPED (install the Debian packages {' '.join(missing)})"
    expect, problems = layout_expectations(root)
    if problems:
        return problems, ""
    card = work / "card"
    shutil.rmtree(card, ignore_errors=True)
    tree = card / "root"
    shutil.copytree(rootfs, tree, symlinks=True)
    # What the device layer puts on the boot partition, reduced to what the layout edits.
    (tree / "boot/firmware").mkdir(parents=True, exist_ok=True)
    (tree / "boot/firmware/cmdline.txt").write_text(
        "console=serial0,115200 root=/dev/mmcblk0p2 rootfstype=ext4 fsck.repair=yes rootwait\n"
    )
    (tree / "boot/firmware/config.txt").write_text("arm_64bit=1\n")
    # genimage rounds partitions up to the template's 4 MiB alignment: sizes here are multiples.
    root_mib = (tree_bytes(tree) * 3 // 2 // MIB + 24 + 3) // 4 * 4
    sizes = {"boot": 64, "root": root_mib, "data": 16}
    try:
        disk = make_card(tree, card, "guetteur-verify", sizes, SAMPLE_SIGNATURE, "y")
    except StepError as exc:
        return [str(exc)], ""
    gout = disk.parent

    signature, parts = mbr_partitions(disk)
    sig = int(SAMPLE_SIGNATURE, 16)
    if signature != sig:
        problems.append(f"card: disk signature {signature:#010x}, want {SAMPLE_SIGNATURE}")
    want = [("boot", 0x0C, "vfat", "bootfs"), ("root", 0x83, "ext4", "GTROOT")]
    want.append(("data", 0x83, "ext4", expect["label"]))
    if len(parts) != len(want):
        return [*problems, f"card: {len(parts)} partitions, want {len(want)}"], ""
    disk_sectors = disk.stat().st_size // SECTOR
    for part, (name, ptype, fstype, label) in zip(parts, want, strict=True):
        if part["type"] != ptype:
            problems.append(
                f"card: partition {name} has type {part['type']:#04x}, want {ptype:#04x}"
            )
        if part["start"] % (4 * MIB // SECTOR):
            problems.append(f"card: partition {name} does not start on a 4 MiB boundary")
        if part["sectors"] * SECTOR != sizes[name] * MIB:
            problems.append(
                f"card: partition {name} is {part['sectors'] * SECTOR} bytes, want {sizes[name]} MiB"
            )
        got = fs_label(disk, part["start"])
        if got != (fstype, label):
            problems.append(
                f"card: partition {name} holds {got[0]} labelled {got[1]!r}, want {fstype} {label!r}"
            )
    if not parts[0]["bootable"]:
        problems.append("card: the boot partition is not marked bootable")
    if parts[-1]["start"] + parts[-1]["sectors"] != disk_sectors:
        problems.append("card: the data partition does not end at the end of the image")

    partuuid = f"{sig:08x}"
    # /etc/fstab and /data as they are in the root partition of the card
    root_img = gout / "guetteur-root.ext4"
    with disk.open("rb") as f:
        f.seek(parts[1]["start"] * SECTOR)
        if hashlib.sha256(f.read(root_img.stat().st_size)).hexdigest() != sha256(root_img):
            problems.append(
                "card: the root partition differs from the root file system genimage made"
            )
    fstab = fstab_entries(_run(["debugfs", "-R", "cat /etc/fstab", str(root_img)]).stdout)
    root_entry, boot_entry = fstab.get("/"), fstab.get("/boot/firmware")
    if (
        not root_entry
        or root_entry[0] != f"PARTUUID={partuuid}-02"
        or "ro" not in root_entry[3].split(",")
    ):
        problems.append(
            f"card: fstab / entry {root_entry}, want PARTUUID={partuuid}-02 ext4 ro,..."
        )
    if not boot_entry or boot_entry[0] != f"PARTUUID={partuuid}-01" or boot_entry[2] != "vfat":
        problems.append(
            f"card: fstab /boot/firmware entry {boot_entry}, want PARTUUID={partuuid}-01 vfat"
        )
    if expect["mountpoint"] in fstab:
        problems.append(f"card: fstab mounts {expect['mountpoint']} (data.mount does)")
    data_dir = debugfs_names(root_img, expect["mountpoint"])
    if data_dir != [".", ".."]:
        problems.append(
            f"card: root's {expect['mountpoint']} is not an empty mount point: {data_dir}"
        )
    data_root = debugfs_names(gout / "guetteur-data.ext4", "/")
    if data_root != [".", "..", "lost+found"]:
        problems.append(f"card: the data partition is not empty: {data_root}")
    cmdline = _run(
        ["mtype", "-i", str(gout / "guetteur-boot.vfat"), "::cmdline.txt"],
        dict(os.environ, MTOOLS_SKIP_CHECK="1"),
    ).stdout.split()
    roots = [a for a in cmdline if a.startswith("root=")]
    if roots != [f"root=PARTUUID={partuuid}-02"] or "rootwait" not in cmdline:
        problems.append(
            f"card: kernel command line {cmdline}, want root=PARTUUID={partuuid}-02 once"
        )

    # With readonly_root=n the set-up script writes a writable root.
    with tempfile.TemporaryDirectory() as tmp:
        _run(
            [str(LAYOUT / "setup-partition.sh"), "root", SAMPLE_SIGNATURE],
            dict(os.environ, IMAGEMOUNTPATH=tmp, IGconf_guetteur_readonly_root="n"),
        )
        rw = (
            fstab_entries((Path(tmp) / "etc/fstab").read_text()).get("/")
            if (Path(tmp) / "etc/fstab").exists()
            else None
        )
        if not rw or "rw" not in rw[3].split(","):
            problems.append(f"setup-partition.sh with readonly_root=n: fstab / entry {rw}, want rw")

    # First boot on a bigger card: the partition takes the rest of the card, the ext4 follows.
    grow = LAYER / "guetteur.d/overlay/usr/lib/guetteur/grow-data-partition"
    extra = 48 * MIB
    with disk.open("r+b") as f:
        f.truncate(disk.stat().st_size + extra)
    proc = _run([str(grow), "--table", str(disk), str(parts[-1]["number"])])
    grown_sig, grown = mbr_partitions(disk)
    if proc.returncode != 0:
        problems.append(f"grow-data-partition --table failed: {proc.stderr.strip()[-300:]}")
    elif grown_sig != signature or grown[:-1] != parts[:-1]:
        problems.append(
            "grow-data-partition changed the disk signature or the boot/root partitions"
        )
    elif grown[-1]["start"] != parts[-1]["start"] or (
        grown[-1]["start"] + grown[-1]["sectors"] != disk.stat().st_size // SECTOR
    ):
        problems.append(
            f"grow-data-partition: data partition {grown[-1]}, want it to end at the card's end"
        )
    data_img = gout / "guetteur-data.ext4"
    with data_img.open("r+b") as f:
        f.truncate(grown[-1]["sectors"] * SECTOR)
    _run(["e2fsck", "-fy", str(data_img)])
    proc = _run(["resize2fs", str(data_img)])
    blocks = re.search(r"Block count:\s+(\d+)", _run(["dumpe2fs", "-h", str(data_img)]).stdout)
    block_size = re.search(r"Block size:\s+(\d+)", _run(["dumpe2fs", "-h", str(data_img)]).stdout)
    fs_bytes = int(blocks.group(1)) * int(block_size.group(1)) if blocks and block_size else 0
    if proc.returncode != 0 or fs_bytes != grown[-1]["sectors"] * SECTOR:
        problems.append(
            f"resize2fs did not grow the data file system to its partition: {proc.stderr.strip()[-300:]}"
        )
    summary = (
        f"card image: boot {sizes['boot']} MiB FAT32 bootfs, root {sizes['root']} MiB ext4 GTROOT (ro), "
        f"data {sizes['data']} MiB ext4 {expect['label']} grown to "
        f"{grown[-1]['sectors'] * SECTOR // MIB} MiB"
    )
    shutil.rmtree(card, ignore_errors=True)
    return problems, summary


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
    # mount points of the data partition's bind mounts must exist on the read-only root
    for d in (
        "etc/guetteur",
        "var/lib/guetteur",
        "var/lib/systemd/timesync",
        # systemd-logind's StateDirectory: on a read-only root it must exist, or logind fails
        # (status 238) and the power button does nothing
        "var/lib/systemd/linger",
        "opt/guetteur/releases",
        "data",
        "boot/firmware",
    ):
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
    card_problems, card_summary = verify_card_image(root, rootfs, out)
    problems += card_problems
    if problems:
        raise StepError("verify found problems:\n  " + "\n  ".join(problems))
    print(
        "verify: "
        + ", ".join(f"{u} exposure {s}" for u, s in scores.items())
        + f"; {len(ours)} units verified; payload reproducible; {card_summary}"
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
