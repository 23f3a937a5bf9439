"""The VM image's pieces that run on the host without QEMU: the `guetteur` layer read as the Pi
image's build reads it, the `igconf` shim its hooks rely on, and the Pelco-D frame finder of
the image test. The image itself is built and booted by `make -C image-build vm-test`."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "image-build" / "tools"


def tool(name: str) -> ModuleType:
    sys.path.insert(0, str(TOOLS))
    try:
        spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(TOOLS))


def test_the_vm_image_runs_the_layers_own_packages_and_hooks() -> None:
    vm = tool("vmimage")
    packages, hooks = vm.layer_spec()
    assert {"python3", "python3-venv", "fdisk", "e2fsprogs"} <= set(packages)
    assert any("/usr/lib/guetteur/factory" in h and "pip install" in h for h in hooks)
    assert any("tmp.mount" in h for h in hooks)
    # every hook is valid shell once the shim is in front of it
    for hook in hooks:
        proc = subprocess.run(["sh", "-n", "-c", vm.IGCONF_SHIM + hook], capture_output=True)
        assert proc.returncode == 0, (hook, proc.stderr)


@pytest.mark.parametrize(("value", "expected"), [("y", 0), ("n", 1), (None, 1)])
def test_igconf_shim_answers_isy_like_rpi_image_gen(value: str | None, expected: int) -> None:
    vm = tool("vmimage")
    env = {"PATH": "/usr/bin:/bin"}
    if value is not None:
        env["IGconf_guetteur_readonly_root"] = value
    script = vm.IGCONF_SHIM + "igconf isy guetteur_readonly_root"
    assert subprocess.run(["sh", "-c", script], env=env).returncode == expected


def test_pelco_frames_are_found_in_a_serial_capture() -> None:
    vt = tool("vmtest")
    stop = bytes([0xFF, 0x01, 0x00, 0x00, 0x00, 0x00, 0x01])
    right = bytes([0xFF, 0x01, 0x00, 0x02, 0x20, 0x00, 0x23])
    noise = b"\x00\x13garbage\xff\x01\x00"
    assert vt.pelco_frames(noise + right + stop) == [right, stop]
    assert vt.pelco_frames(bytes([0xFF, 0x01, 0x00, 0x02, 0x20, 0x00, 0x24])) == []
