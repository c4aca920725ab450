"""Choosing QEMU's accelerator: `tcg` (emulation), `kvm`, or `auto`.

`/dev/kvm` opening is not proof that KVM works: under nested virtualisation a KVM guest can
hang at its first instruction. So `auto` boots a real probe guest under KVM (a hand-assembled
firmware image that writes a marker to the serial port and halts) and picks KVM only if the
marker appears within a few seconds. The verdict is cached per host boot
(/proc/sys/kernel/random/boot_id) so the probe runs once per boot, not once per VM.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Literal

from cumulo.agent.drivers.base import DriverError
from cumulo.domain.arch import Arch

Accel = Literal["kvm", "tcg"]

KVM_DEVICE = Path("/dev/kvm")
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
PROBE_MARKER = b"CUMULO-ACCEL-PROBE-OK"
PROBE_TIMEOUT_S = 3.0
_STAGES = {
    b"R": "stopped in real mode",
    b"RP": "stopped in protected mode",
    b"RPL": "stopped in long mode",
}


def host_arch() -> Arch | None:
    """The host's own architecture, or None when cumulo has no such guest arch."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return Arch.X86_64
    if machine in ("aarch64", "arm64"):
        return Arch.ARM64
    return None


def resolve_accel(requested: str, arch: Arch, cache_dir: Path) -> Accel:
    """The accelerator to run `arch` guests with on this host.

    - `tcg`: always.
    - `kvm`: only when /dev/kvm opens and `arch` is the host's arch; DriverError otherwise.
    - `auto`: KVM only when a probe guest has been seen running under KVM on this host boot;
      TCG for cross-arch guests, a missing /dev/kvm, or a probe that hangs or fails.
    """
    if requested == "tcg":
        return "tcg"
    if requested not in ("kvm", "auto"):
        raise DriverError(f"unknown accelerator {requested!r} (expected auto, kvm or tcg)")
    native = host_arch()
    if requested == "kvm":
        if arch is not native:
            raise DriverError(
                f"accelerator kvm cannot run {arch} guests on this {platform.machine()} host"
                " (use tcg or auto)"
            )
        problem = _kvm_device_problem()
        if problem:
            raise DriverError(f"accelerator kvm is unavailable: {problem}")
        return "kvm"
    if arch is not native or _kvm_device_problem():
        return "tcg"
    return "kvm" if _cached_probe(arch, cache_dir) else "tcg"


def _kvm_device_problem() -> str:
    try:
        fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"cannot open {KVM_DEVICE}: {exc.strerror}"
    os.close(fd)
    return ""


def _boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return "unknown"


def _cached_probe(arch: Arch, cache_dir: Path) -> bool:
    cache = cache_dir / f"accel-probe-{arch}.json"
    boot_id = _boot_id()
    try:
        data = json.loads(cache.read_text())
        if data.get("boot_id") == boot_id and isinstance(data.get("kvm_works"), bool):
            return bool(data["kvm_works"])
    except (OSError, ValueError, AttributeError):
        pass
    works, detail = probe_guest(arch, "kvm")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"boot_id": boot_id, "kvm_works": works, "detail": detail}))
    tmp.replace(cache)
    return works


def probe_guest(arch: Arch, accel: str, timeout: float = PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """Boot the probe firmware under `accel`; (marker seen, one-line detail).

    Running it under `tcg` checks the probe image itself (used by the tests).
    """
    binary = shutil.which(arch.qemu_binary)
    if binary is None:
        return False, f"{arch.qemu_binary} not found"
    with tempfile.TemporaryDirectory(prefix="cumulo-probe-") as tmp:
        rom = Path(tmp) / "probe.rom"
        out = Path(tmp) / "serial.out"
        rom.write_bytes(probe_rom(arch))
        out.touch()
        if arch is Arch.X86_64:
            cpu = "host" if accel == "kvm" else "max"
            machine = ["-machine", "q35", "-cpu", cpu, "-m", "16"]
        else:
            cpu = "host" if accel == "kvm" else "cortex-a57"
            machine = ["-machine", "virt", "-cpu", cpu, "-m", "64"]
        argv = [
            binary, "-nodefaults", "-no-user-config", "-display", "none",
            "-accel", accel, *machine, "-bios", str(rom), "-serial", f"file:{out}",
        ]  # fmt: skip
        started = time.monotonic()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            while time.monotonic() - started < timeout:
                if PROBE_MARKER in out.read_bytes():
                    elapsed = time.monotonic() - started
                    return True, f"{accel} probe guest ran in {elapsed:.2f}s"
                if proc.poll() is not None:
                    break
                time.sleep(0.02)
            seen = out.read_bytes()
            if PROBE_MARKER in seen:
                return True, f"{accel} probe guest ran"
            stage = _STAGES.get(seen[:2], "no output at all")
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
                err = " ".join(err.split())[:300]
                return False, f"{accel} probe qemu exited {proc.returncode} ({stage}): {err}"
            return False, f"{accel} probe guest hung within {timeout:.0f}s ({stage})"
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, 9)
            proc.wait()
            if proc.stderr:
                proc.stderr.close()


# x86_64 probe firmware (GNU as source below, assembled with `as --64` + `objcopy -O binary`).
# It runs at F000:0000 in real mode, prints "R", enters 32-bit protected mode and prints "P",
# builds identity-mapped page tables at 0x1000, enters 64-bit long mode and prints
# "L" + PROBE_MARKER, then halts. Nested KVM here stops right after "R": exactly the mode
# switches a Linux kernel makes at entry, which is why a real-mode-only probe is not enough.
#
#   .code16: cli; mov $0x3f8,%dx; mov $'R',%al; out %al,%dx; lgdtl %cs:(gdtr-start)
#            mov %cr0,%eax; or $1,%al; mov %eax,%cr0; ljmpl $0x08,$(0xF0000+pm32-start)
#   .code32: mov $0x10,%ax; mov %ax,%ds/%es/%ss; mov $'P',%al; out %al,%dx
#            zero 0x1000..0x3fff (rep stosl); PML4[0]=0x2003; PDPT[0]=0x3003; PD[0]=0x83
#            cr4|=PAE; cr3=0x1000; EFER(0xC0000080)|=LME; cr0|=PG; ljmp $0x18,$(lm64)
#   .code64: mov $0x3f8,%dx; lea msg(%rip),%rsi; 1: lodsb; test; jz 2f; out; jmp 1b
#            2: hlt; jmp 2b
#   gdt: null, code32 0x00CF9A000000FFFF, data 0x00CF92000000FFFF, code64 0x00AF9A000000FFFF
#   gdtr: .word 31; .long 0xF0000+gdt-start      msg: .asciz "LCUMULO-ACCEL-PROBE-OK\n"
_X86_PROBE_CODE = bytes.fromhex(
    "fabaf803b052ee2e660f0116c0000f20c00c010f22c066ea1e000f00080066b810008ed88ec08ed0b050eebf"
    "0010000031c0b9000c0000fcf3abc7050010000003200000c7050020000003300000c7050030000083000000"
    "0f20e083c8200f22e0b8001000000f22d8b9800000c00f320d000100000f300f20c00d000000800f22c0ea89"
    "000f00180066baf803488d3532000000ac84c07403eeebf8f4ebfd900000000000000000ffff0000009acf00"
    "ffff00000092cf00ffff0000009aaf001f00a0000f004c43554d554c4f2d414343454c2d50524f42452d4f4b"
    "0a00"
)


def probe_rom(arch: Arch) -> bytes:
    """A firmware image that prints PROBE_MARKER on the first serial port and halts."""
    if arch is Arch.X86_64:
        # 64 KiB BIOS image. Reset vector (offset 0xFFF0): jmp far F000:0000 -> offset 0.
        rom = bytearray(64 * 1024)
        rom[: len(_X86_PROBE_CODE)] = _X86_PROBE_CODE
        rom[0xFFF0:0xFFF5] = b"\xea\x00\x00\x00\xf0"
        return bytes(rom)
    # arm64 `virt`: the CPU starts at 0 (flash) in EL1 with the MMU off; PL011 data register
    # at 0x09000000. (Not verified under KVM: no arm64 host was available; TCG-tested.)
    text = b"L" + PROBE_MARKER + b"\n"
    words = [0xD2A12000]  # movz x0, #0x0900, lsl #16
    for ch in text:
        words += [0x52800000 | (ch << 5) | 1, 0x39000001]  # movz w1, #ch; strb w1, [x0]
    words += [0xD503207F, 0x17FFFFFF]  # wfi; b .-4
    return b"".join(w.to_bytes(4, "little") for w in words)
