"""Boot the built-in tiny image on both architectures under TCG, the way the QEMU driver does:
direct kernel boot, qcow2 overlay on rootfs.qcow2, NoCloud seed on a second virtio disk,
then power it down over QMP and check QEMU reports a clean guest shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from qemu.qmp import QMPClient

from cumulo.agent.storage.seed import build_seed_iso
from cumulo.domain.arch import Arch
from cumulo.images.tiny import ensure_tiny_image

pytestmark = pytest.mark.qemu

MACHINE = {
    Arch.X86_64: ["-machine", "q35", "-cpu", "max"],
    Arch.ARM64: ["-machine", "virt", "-cpu", "cortex-a57"],
}


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="ct-", dir="/tmp"))  # short: unix socket path limit
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


async def _wait_for(
    serial: Path, needles: list[str], proc: subprocess.Popen[bytes], timeout: float
) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = serial.read_text(errors="replace") if serial.exists() else ""
        if all(n in text for n in needles):
            return text
        if proc.poll() is not None:
            break
        await asyncio.sleep(0.05)
    raise AssertionError(f"{needles} not seen on the console; console so far:\n{text[-4000:]}")


async def _status(qmp: QMPClient) -> str:
    reply = await qmp.execute("query-status")
    assert isinstance(reply, dict)
    return str(reply["status"])


@pytest.mark.parametrize("arch", list(Arch), ids=lambda a: a.value)
async def test_tiny_boots_reads_seed_and_powers_off(arch: Arch, workdir: Path) -> None:
    if shutil.which(arch.qemu_binary) is None or shutil.which("qemu-img") is None:
        pytest.skip(f"{arch.qemu_binary} / qemu-img not installed")
    image = ensure_tiny_image(arch)
    meta = json.loads((image / "image.json").read_text())
    assert meta["arch"] == arch.value and meta["boot"] == "kernel"
    # Booted in the least RAM the image claims (the API refuses less): the claim is checked.

    overlay = workdir / "disk.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
         "-b", str(image / "rootfs.qcow2"), str(overlay)],
        check=True,
    )  # fmt: skip
    seed = workdir / "seed.iso"
    # the user's script still runs next to cumulo's #cloud-config (FQDN); the default user
    # pings (ICMP datagram socket) and sudoes without a password
    script = (
        b'#!/bin/sh\necho "user-data-marker uid=$(id -u) host=$(hostname) fqdn=$(hostname -f)"\n'
        b"su cumulo -c 'echo \"as-cumulo uid=$(id -u) sudo=$(sudo -n id -u)"
        b' ping=$(ping -c 1 -W 5 127.0.0.1 > /dev/null && echo ok)"\'\n'
    )
    hostname = f"tiny-{arch.value.replace('_', '-')}"
    fqdn = f"{hostname}.default.local-1a.cumulo.internal"
    build_seed_iso(
        seed,
        instance_id="i-tinytest",
        hostname=hostname,
        fqdn=fqdn,
        user_data=script,
        ssh_public_keys=["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC0ffee test@cumulo"],
    )
    serial = workdir / "serial.log"
    qmp_sock = workdir / "qmp.sock"
    argv = [
        arch.qemu_binary, "-nodefaults", "-no-user-config", "-display", "none",
        *MACHINE[arch], "-accel", "tcg", "-m", str(meta["min_ram_mib"]),
        "-kernel", str(image / "vmlinuz"), "-initrd", str(image / "initrd.img"),
        "-append", meta["kernel_cmdline"],
        "-drive", f"if=none,id=root,file={overlay},format=qcow2",
        "-device", "virtio-blk-pci,drive=root",
        "-drive", f"if=none,id=seed,file={seed},format=raw,readonly=on",
        "-device", "virtio-blk-pci,drive=seed",
        "-device", "virtio-rng-pci",
        "-action", "shutdown=pause",
        "-serial", f"file:{serial}",
        "-qmp", f"unix:{qmp_sock},server=on,wait=off",
    ]  # fmt: skip
    started = time.monotonic()
    with open(workdir / "qemu.stderr", "wb") as errf:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errf
        )
    qmp = QMPClient(f"tiny-{arch.value}")
    try:
        await _wait_for(
            serial, [f"cumulo-tiny: ready hostname={hostname} instance-id=i-tinytest"], proc, 60
        )
        boot_s = time.monotonic() - started
        text = await _wait_for(
            serial,
            [f"user-data-marker uid=0 host={hostname} fqdn={fqdn}",
             "as-cumulo uid=1000 sudo=0 ping=ok"],
            proc, 30,
        )  # fmt: skip
        print(f"{arch.value}: ready line after {boot_s:.2f}s")
        assert "BEGIN SSH HOST KEY KEYS" in text
        assert "installed 1 ssh key(s)" in text

        await qmp.connect(str(qmp_sock))
        assert await _status(qmp) == "running"
        await qmp.execute("system_powerdown")
        deadline = time.monotonic() + 20
        status = ""
        while time.monotonic() < deadline:
            status = await _status(qmp)
            if status == "shutdown":
                break
            await asyncio.sleep(0.1)
        assert status == "shutdown", serial.read_text(errors="replace")[-3000:]
        assert "reboot: Power down" in serial.read_text(errors="replace")
        with contextlib.suppress(Exception):
            await qmp.execute("quit")
    finally:
        with contextlib.suppress(Exception):
            await qmp.disconnect()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode is not None
