"""The QEMU command line of one VM, built by a pure function (spec + paths + accel -> argv).

No I/O here: golden tests pin the exact argv. The QEMU driver adds nothing to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cumulo.agent.drivers.base import VMSpec
from cumulo.domain.arch import Arch

Accel = Literal["kvm", "tcg"]

# Linux limits sun_path to 108 bytes including the terminating NUL.
UNIX_PATH_MAX = 108

# UEFI firmware for arm64 guests that boot from their disk (Debian: qemu-efi-aarch64).
AARCH64_UEFI = Path("/usr/share/qemu-efi-aarch64/QEMU_EFI.fd")


@dataclass(frozen=True)
class VMPaths:
    """The runtime files of one VM, all inside `<runtime_dir>/<vm_id>/`."""

    dir: Path

    @classmethod
    def for_vm(cls, runtime_dir: Path, vm_id: str) -> VMPaths:
        return cls(runtime_dir / vm_id)

    @property
    def vm_id(self) -> str:
        return self.dir.name

    @property
    def qmp_sock(self) -> Path:
        return self.dir / "qmp.sock"

    @property
    def pidfile(self) -> Path:
        return self.dir / "qemu.pid"

    @property
    def console_log(self) -> Path:
        return self.dir / "console.log"

    @property
    def stop_marker(self) -> Path:
        """Written BEFORE cumulo stops the VM on purpose: no process + marker = STOPPED."""
        return self.dir / "stop-requested"

    @property
    def spec_json(self) -> Path:
        return self.dir / "spec.json"

    @property
    def launch_log(self) -> Path:
        """QEMU's stderr until it has daemonized (launch errors end up here)."""
        return self.dir / "qemu.stderr"

    @property
    def last_pid(self) -> Path:
        """The pid of the latest launch (QEMU removes its own pidfile when it exits cleanly)."""
        return self.dir / "last.pid"


def build_argv(spec: VMSpec, paths: VMPaths, accel: Accel) -> list[str]:
    """The full QEMU argv (argv[0] is the binary name, resolved through PATH).

    With `spec.netns`, QEMU is started by `ip netns exec <netns>` (which execs QEMU, so the
    daemonized process is QEMU itself, inside the namespace, where it creates the taps).
    """
    prefix = ["ip", "netns", "exec", spec.netns] if spec.netns else []
    argv: list[str] = [
        *prefix,
        spec.arch.qemu_binary,
        "-name",
        f"guest={spec.vm_id}",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        *_machine(spec.arch, accel),
        "-accel",
        accel,
        "-smp",
        str(spec.vcpus),
        "-m",
        str(spec.ram_mib),
        "-chardev",
        f"file,id=console,path={_opt(paths.console_log)},append=on",
        "-serial",
        "chardev:console",
    ]
    if spec.kernel is not None:
        argv += ["-kernel", str(spec.kernel)]
        if spec.initrd is not None:
            argv += ["-initrd", str(spec.initrd)]
        if spec.kernel_cmdline:
            argv += ["-append", spec.kernel_cmdline]
    elif spec.arch is Arch.ARM64:
        argv += ["-bios", str(AARCH64_UEFI)]
    argv += [
        "-drive",
        f"if=none,id=root,file={_opt(spec.boot_disk)},format=qcow2,cache=writeback,discard=unmap",
        "-device",
        "virtio-blk-pci,drive=root,id=root-dev",
    ]
    if spec.seed_iso is not None:
        argv += [
            "-drive",
            f"if=none,id=seed,file={_opt(spec.seed_iso)},format=raw,readonly=on",
            "-device",
            "virtio-blk-pci,drive=seed,id=seed-dev",
        ]
    for i, nic in enumerate(spec.nics):
        argv += [
            "-netdev",
            f"tap,id=net{i},ifname={_opt(nic.tap)},script=no,downscript=no",
            "-device",
            f"virtio-net-pci,netdev=net{i},mac={_opt(nic.mac)},romfile=",
        ]
    argv += [
        "-device",
        "virtio-rng-pci",
        "-qmp",
        f"unix:{_opt(paths.qmp_sock)},server=on,wait=off",
        # A guest poweroff pauses QEMU (status "shutdown") instead of exiting, so the driver
        # can tell a guest poweroff (SHUTDOWN) from a dead process (CRASHED).
        "-action",
        "shutdown=pause",
        "-pidfile",
        str(paths.pidfile),
        "-daemonize",
    ]
    return argv


def _machine(arch: Arch, accel: Accel) -> list[str]:
    if arch is Arch.X86_64:
        return ["-machine", "q35", "-cpu", "host" if accel == "kvm" else "max"]
    if accel == "kvm":
        return ["-machine", "virt,gic-version=host", "-cpu", "host"]
    return ["-machine", "virt", "-cpu", "cortex-a57"]


def _opt(path: Path | str) -> str:
    """A path (or name) as a QEMU option value: a comma is written twice."""
    return str(path).replace(",", ",,")
