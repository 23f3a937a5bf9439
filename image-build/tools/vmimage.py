#!/usr/bin/env python3
"""The gateway image for a virtual machine (`make -C image-build vm-image`, run as root).

The generic-x86 gateway (an industrial PC) built from Debian 12's packages and the project's own
wheels, with what the Raspberry Pi image shares, taken from where the Pi image takes it:

- the `guetteur` layer (`layer/guetteur.yaml`): its package list and its customize hooks, run
  unchanged (staged tree, factory release built in the target chroot, sysusers, units enabled,
  /tmp on tmpfs for the read-only root);
- the staged tree (`imagebuild.py stage`): units, drop-ins, overlay, profiles, wheels;
- the disk layout (`image/guetteur/`): the genimage template rendered by the layout's own
  preimage hook, the partitions made by its `setup-partition.sh` (boot FAT with cmdline.txt,
  root read-only by PARTUUID, data partition GTDATA last, grown at first boot).

What stands in for the Pi's device layer (firmware, kernel) is the short list below: Debian's
kernel with a small initramfs, systemd-networkd with DHCP, and the kernel and initrd copied
onto the boot partition beside cmdline.txt (QEMU loads them from there, as the Pi firmware
loads the kernel named on its FAT partition).

Caches under image-build/out/vm (ignored by git): the base tarball, keyed by a hash of the
package list and the base customisation; the wheelhouse, keyed by the dependency list.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import imagebuild as ib
import yaml

SUITE = "bookworm"
MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
# The generic-x86 device layer: what the Pi's firmware/kernel layers provide there.
DEVICE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    # systemd-logind (through D-Bus) turns the power button into a clean shutdown: without it
    # an ACPI power-off (QEMU's system_powerdown, an industrial PC's button) does nothing
    "dbus",
    "udev",
    "util-linux",
    "kmod",
    "dosfstools",
    "initramfs-tools",
    "linux-image-amd64",
)
# Run once in the cached base. The initramfs holds only what finds and checks the root (a
# MODULES=most initramfs is ~35 MB and slows every boot under software emulation); the
# machine-id is left empty so that systemd makes a transient one on the read-only root.
DEVICE_CUSTOMIZE = r"""set -eu
root=$1
printf 'virtio_pci\nvirtio_blk\nvirtio_net\next4\nvfat\nnls_cp437\nnls_ascii\n' >> "$root/etc/initramfs-tools/modules"
sed -i 's/^MODULES=.*/MODULES=list/' "$root/etc/initramfs-tools/initramfs.conf"
chroot "$root" update-initramfs -u -k all
mkdir -p "$root/etc/systemd/network"
printf '[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\n' > "$root/etc/systemd/network/20-wired.network"
chroot "$root" systemctl enable systemd-networkd.service
: > "$root/etc/machine-id"
echo guetteur > "$root/etc/hostname"
"""
# The kernel command line on the boot partition; setup-partition.sh adds root=PARTUUID=...-02.
CMDLINE = "console=ttyS0,115200 rootfstype=ext4 fsck.repair=yes rootwait panic=10 quiet\n"
PROFILE = "generic-x86"
SIZES_MIB = {"boot": 128, "data": 64}
MIB = 1 << 20
# Debian 12 has glibc 2.36: every manylinux tag up to it (pip does not infer the older ones).
MANYLINUX = (
    "manylinux_2_36",
    "manylinux_2_34",
    "manylinux_2_31",
    "manylinux_2_28",
    "manylinux_2_27",
    "manylinux_2_24",
    "manylinux_2_17",
    "manylinux2014",
    "manylinux_2_12",
    "manylinux2010",
    "manylinux_2_5",
    "manylinux1",
)
SIGNATURE = "0x47545836"  # "GTX6": fixed, so vm-test knows root=PARTUUID=47545836-02


def say(step: str, t0: float) -> None:
    print(f"[{time.monotonic() - t0:7.1f} s] {step}", flush=True)


def _sha(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def layer_spec() -> tuple[list[str], list[str]]:
    """The `guetteur` layer's mmdebstrap packages and customize hooks (the YAML body)."""
    text = (ib.LAYER / "guetteur.yaml").read_text()
    body = yaml.safe_load(text.split("# METAEND", 1)[1])["mmdebstrap"]
    return list(body["packages"]), [str(h) for h in body["customize-hooks"]]


def project_dependencies(root: Path) -> list[str]:
    with (root / "pyproject.toml").open("rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def wheelhouse(root: Path, cache: Path, py: str) -> Path:
    """Every dependency wheel for CPython 3.11 x86_64 (Debian 12's Python), downloaded once."""
    deps = project_dependencies(root)
    dest = cache / f"wheelhouse-{_sha(*deps)}"
    if (dest / ".complete").exists():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    cmd = [py, "-m", "pip", "download", "-q", "--disable-pip-version-check"]
    cmd += ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp"]
    for glibc in MANYLINUX:
        cmd += ["--platform", f"{glibc}_x86_64"]
    cmd += ["-d", str(dest), *deps]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ib.StepError(f"pip download of the dependency wheels failed: {proc.stderr[-1500:]}")
    (dest / ".complete").touch()
    return dest


def base_tarball(cache: Path, packages: list[str]) -> Path:
    """Debian 12 minbase + the layer's and the device's packages, customised once; cached."""
    pkgs = sorted(set(packages) | set(DEVICE_PACKAGES))
    key = _sha(SUITE, *MIRRORS, *pkgs, DEVICE_CUSTOMIZE)
    tar = cache / f"base-{key}.tar"
    if tar.exists():
        return tar
    for old in cache.glob("base-*.tar*"):
        old.unlink()
    part = tar.with_suffix(".tar.part")
    cmd = ["mmdebstrap", "--variant=minbase", "--mode=root", "--format=tar"]
    cmd += ["--aptopt=APT::Install-Recommends false", "--dpkgopt=path-exclude=/usr/share/man/*"]
    cmd += ["--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/locale/*"]
    cmd += ["--dpkgopt=path-include=/usr/share/doc/guetteur/*", f"--include={','.join(pkgs)}"]
    cmd += [f"--customize-hook={DEVICE_CUSTOMIZE}", SUITE, str(part), *MIRRORS]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        part.unlink(missing_ok=True)
        raise ib.StepError(f"mmdebstrap failed: {proc.stderr[-2000:]}")
    part.rename(tar)
    return tar


# rpi-image-gen gives the layer's hooks `igconf`; this is the one query they use.
IGCONF_SHIM = 'igconf() { [ "$1" = isy ] && eval "case \\${IGconf_$2:-n} in y|Y|yes|1) true;; *) false;; esac"; }\n'


def run_layer_hooks(tree: Path, hooks: list[str], env: dict[str, str]) -> None:
    """The layer's customize hooks, as mmdebstrap runs them ($1 = the target root), with /proc
    and /dev in the target for pip and venv, in a private mount namespace (nothing leaks)."""
    for n, hook in enumerate(hooks):
        script = (
            'mount -t proc proc "$1/proc" && mount --rbind /dev "$1/dev" && '
            f'sh -c {_shq(IGCONF_SHIM + hook)} hook "$1"'
        )
        proc = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(tree)],
            capture_output=True,
            text=True,
            env=env,
        )
        if proc.returncode != 0:
            raise ib.StepError(
                f"layer hook {n + 1} failed:\n{hook}\n{(proc.stderr or proc.stdout)[-2000:]}"
            )


def _shq(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def build(root: Path, out: Path, py: str, pubkey: Path | None) -> Path:
    t0 = time.monotonic()
    cache = out / "vm"
    cache.mkdir(parents=True, exist_ok=True)
    packages, hooks = layer_spec()
    wh = wheelhouse(root, cache, py)
    say(f"wheelhouse {wh.name}: {len(list(wh.glob('*.whl')))} wheels", t0)
    ib.cmd_payload(root, out, wh)
    ib.cmd_stage(root, out, update_key(out, pubkey))
    say("payload and staged tree", t0)
    tar = base_tarball(cache, packages)
    say(f"base {tar.name} ({tar.stat().st_size // MIB} MiB)", t0)

    work = cache / "work"
    if work.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=True)
    tree = work / "root"
    tree.mkdir(parents=True)
    subprocess.run(["tar", "-C", str(tree), "-xf", str(tar)], check=True)
    env = dict(
        os.environ,
        IGconf_guetteur_stage=str(out / "rootfs"),
        IGconf_guetteur_payload=str(out / "payload"),
        IGconf_guetteur_readonly_root="y",
    )
    run_layer_hooks(tree, hooks, env)
    say(f"layer `guetteur`: {len(hooks)} hooks run in the target", t0)

    boot = tree / "boot/firmware"
    boot.mkdir(parents=True, exist_ok=True)
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise ib.StepError("no kernel in the base's /boot (linux-image-amd64 missing?)")
    version = kernels[-1].name.removeprefix("vmlinuz-")
    shutil.copyfile(kernels[-1], boot / "vmlinuz")
    shutil.copyfile(tree / f"boot/initrd.img-{version}", boot / "initrd.img")
    (boot / "cmdline.txt").write_text(CMDLINE)
    # D-Bus reads the machine id here; tmpfiles would link it at boot, on a read-only root
    dbus_id = tree / "var/lib/dbus/machine-id"
    dbus_id.parent.mkdir(parents=True, exist_ok=True)
    dbus_id.unlink(missing_ok=True)
    dbus_id.symlink_to("/etc/machine-id")
    release = {"profile": PROFILE, "kernel": version, "built": ib.epoch()}
    (tree / "usr/lib/guetteur/image.json").write_text(json.dumps(release) + "\n")

    root_mib = (ib.tree_bytes(tree) * 5 // 4 // MIB + 64 + 3) // 4 * 4
    sizes = {"boot": SIZES_MIB["boot"], "root": root_mib, "data": SIZES_MIB["data"]}
    disk = ib.make_card(tree, work / "card", f"guetteur-{PROFILE}", sizes, SIGNATURE, "y")
    dest = out / f"guetteur-{PROFILE}.img"
    os.replace(disk, dest)
    subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=True)
    say(
        f"image {dest} ({dest.stat().st_size // MIB} MiB: boot {sizes['boot']}, root {root_mib}, data {sizes['data']} MiB)",
        t0,
    )
    return dest


def update_key(out: Path, given: Path | None) -> Path:
    """The update-signing public key baked into the image: --update-pubkey when given, else a
    test pair made once in out/vm/keys, whose private half vm-test signs its bundles with (an
    image built that way is a test image: never ship it)."""
    if given is not None:
        return given
    keys = out / "vm" / "keys"
    pub = keys / "update-signing.pub"
    if not pub.exists():
        from guetteur.keyfiles import generate

        keys.mkdir(parents=True, exist_ok=True)
        generate(keys / "update-signing", pub)
    return pub


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, required=True, help="the repository checkout")
    parser.add_argument("--out", type=Path, default=None, help="output directory")
    parser.add_argument(
        "--update-pubkey",
        type=Path,
        default=None,
        help="Ed25519 public key that signs updates (default: a test key in out/vm/keys)",
    )
    args = parser.parse_args()
    root = args.root.resolve()
    out = (args.out or root / "image-build" / "out").resolve()
    if os.geteuid() != 0:
        print("vm-image: run as root (mmdebstrap --mode=root, chroot, mounts)", file=sys.stderr)
        return 2
    try:
        build(root, out, sys.executable, args.update_pubkey)
    except ib.StepError as exc:
        print(f"vm-image: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
