"""Accelerator choice: tcg always; kvm only when possible; auto only on a proven KVM guest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cumulo.agent.drivers import accel
from cumulo.agent.drivers.base import DriverError
from cumulo.domain.arch import Arch

NATIVE = accel.host_arch() or Arch.X86_64
FOREIGN = Arch.ARM64 if NATIVE is Arch.X86_64 else Arch.X86_64


def test_tcg_is_always_tcg(tmp_path: Path) -> None:
    assert accel.resolve_accel("tcg", FOREIGN, tmp_path) == "tcg"
    assert accel.resolve_accel("tcg", NATIVE, tmp_path) == "tcg"


def test_unknown_accel_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DriverError, match="unknown accelerator"):
        accel.resolve_accel("hvf", NATIVE, tmp_path)


def test_kvm_cross_arch_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DriverError, match="cannot run"):
        accel.resolve_accel("kvm", FOREIGN, tmp_path)


def test_kvm_without_dev_kvm_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "KVM_DEVICE", tmp_path / "no-kvm")
    with pytest.raises(DriverError, match="unavailable"):
        accel.resolve_accel("kvm", NATIVE, tmp_path)


def test_auto_is_tcg_cross_arch_or_without_dev_kvm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_probe(*_: object) -> tuple[bool, str]:
        raise AssertionError("must not probe")

    monkeypatch.setattr(accel, "probe_guest", no_probe)
    assert accel.resolve_accel("auto", FOREIGN, tmp_path) == "tcg"
    monkeypatch.setattr(accel, "KVM_DEVICE", tmp_path / "no-kvm")
    assert accel.resolve_accel("auto", NATIVE, tmp_path) == "tcg"


def test_auto_trusts_only_the_probe_and_caches_it_per_boot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kvm = tmp_path / "kvm"
    kvm.touch()
    boot_id = tmp_path / "boot_id"
    boot_id.write_text("boot-1\n")
    monkeypatch.setattr(accel, "KVM_DEVICE", kvm)
    monkeypatch.setattr(accel, "BOOT_ID", boot_id)
    calls: list[str] = []
    verdict = [True]

    def fake_probe(arch: Arch, how: str) -> tuple[bool, str]:
        calls.append(how)
        return verdict[0], "probed"

    monkeypatch.setattr(accel, "probe_guest", fake_probe)
    cache = tmp_path / "cache"
    assert accel.resolve_accel("auto", NATIVE, cache) == "kvm"
    verdict[0] = False
    assert accel.resolve_accel("auto", NATIVE, cache) == "kvm"  # cached for this boot
    assert calls == ["kvm"]
    data = json.loads((cache / f"accel-probe-{NATIVE}.json").read_text())
    assert data == {"boot_id": "boot-1", "kvm_works": True, "detail": "probed"}
    boot_id.write_text("boot-2\n")  # host rebooted: probe again
    assert accel.resolve_accel("auto", NATIVE, cache) == "tcg"
    assert calls == ["kvm", "kvm"]


def test_probe_roms_have_the_right_shape() -> None:
    x86 = accel.probe_rom(Arch.X86_64)
    assert len(x86) == 64 * 1024 and x86[0xFFF0:0xFFF5] == b"\xea\x00\x00\x00\xf0"
    assert accel.PROBE_MARKER[1:] in x86  # the string the 64-bit code prints
    assert len(accel.probe_rom(Arch.ARM64)) % 4 == 0


@pytest.mark.qemu
@pytest.mark.parametrize("arch", [Arch.X86_64, Arch.ARM64])
def test_probe_guest_prints_the_marker_under_tcg(arch: Arch) -> None:
    """The probe firmware itself works (so a KVM 'no' is about KVM, not the probe)."""
    if shutil.which(arch.qemu_binary) is None:
        pytest.skip(f"{arch.qemu_binary} is not installed")
    works, detail = accel.probe_guest(arch, "tcg")
    assert works, detail
