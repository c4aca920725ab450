"""Golden QEMU command lines: any change to the argv must show up here on purpose."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cumulo.agent.drivers.base import (
    MAX_VOLUMES,
    DriverError,
    LocalFile,
    NbdExport,
    NicSpec,
    VMSpec,
    VolumeAttachment,
)
from cumulo.agent.drivers.qemu_argv import LAUNCHER, Confinement, VMPaths, build_argv, confine
from cumulo.domain.arch import Arch

RUN = Path("/run/cumulo/vms")
VM = "i-0123456789abcdef0"
PATHS = VMPaths.for_vm(RUN, VM)
D = f"{RUN}/{VM}"


def spec(arch: Arch, **kw: object) -> VMSpec:
    base: dict[str, object] = {
        "vm_id": VM,
        "hostname": "web1",
        "arch": arch,
        "vcpus": 2,
        "ram_mib": 512,
        "boot_disk": Path("/var/lib/cumulo/disks/vol-1.qcow2"),
        "kernel": Path("/img/vmlinuz"),
        "initrd": Path("/img/initrd.img"),
        "kernel_cmdline": "console=ttyS0 root=/dev/vda rw quiet",
        "seed_iso": Path("/var/lib/cumulo/seeds/i-0123456789abcdef0.iso"),
    }
    base.update(kw)
    return VMSpec(**base)  # type: ignore[arg-type]


TAIL = [
    "-drive", "if=none,id=root,file=/var/lib/cumulo/disks/vol-1.qcow2,format=qcow2,"
    "cache=writeback,discard=unmap,werror=stop",
    "-device", "virtio-blk-pci,drive=root,id=root-dev",
    "-drive", "if=none,id=seed,file=/var/lib/cumulo/seeds/i-0123456789abcdef0.iso,"
    "format=raw,readonly=on",
    "-device", "virtio-blk-pci,drive=seed,id=seed-dev",
    "-device", "virtio-rng-pci",
    # hot-plug slots for volumes (PCIe root ports)
    "-device", "pcie-root-port,id=hp0,chassis=1,io-reserve=0",
    "-device", "pcie-root-port,id=hp1,chassis=2,io-reserve=0",
    "-device", "pcie-root-port,id=hp2,chassis=3,io-reserve=0",
    "-device", "pcie-root-port,id=hp3,chassis=4,io-reserve=0",
    "-device", "pcie-root-port,id=hp4,chassis=5,io-reserve=0",
    "-device", "pcie-root-port,id=hp5,chassis=6,io-reserve=0",
    "-device", "pcie-root-port,id=hp6,chassis=7,io-reserve=0",
    "-device", "pcie-root-port,id=hp7,chassis=8,io-reserve=0",
    # the monitor: a listening socket the launcher hands over on fd 3
    "-chardev", "socket,id=qmp,fd=3,server=on,wait=off",
    "-mon", "chardev=qmp,mode=control",
    "-action", "shutdown=pause",
    "-pidfile", f"{D}/qemu.pid",
]  # fmt: skip
SANDBOX = ["-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]


def head(binary: str, machine: list[str], accel: str) -> list[str]:
    return [
        binary, "-name", f"guest={VM},debug-threads=on", "-nodefaults", "-no-user-config",
        "-display", "none",
        *SANDBOX, *machine, "-accel", accel, "-smp", "2", "-m", "512",
        "-chardev", "socket,id=console,fd=4,server=on,wait=off,"
                    f"logfile={D}/console.log,logappend=on",
        "-serial", "chardev:console",
    ]  # fmt: skip


KERNEL = [
    "-kernel", "/img/vmlinuz", "-initrd", "/img/initrd.img",
    "-append", "console=ttyS0 root=/dev/vda rw quiet",
]  # fmt: skip


def test_x86_64_tcg() -> None:
    assert build_argv(spec(Arch.X86_64), PATHS, "tcg") == [
        *head("qemu-system-x86_64", ["-machine", "q35", "-cpu", "max"], "tcg"),
        *KERNEL,
        *TAIL,
    ]


def test_x86_64_kvm_uses_the_host_cpu() -> None:
    assert build_argv(spec(Arch.X86_64), PATHS, "kvm") == [
        *head("qemu-system-x86_64", ["-machine", "q35", "-cpu", "host"], "kvm"),
        *KERNEL,
        *TAIL,
    ]


def test_arm64_tcg() -> None:
    assert build_argv(spec(Arch.ARM64), PATHS, "tcg") == [
        *head("qemu-system-aarch64", ["-machine", "virt", "-cpu", "cortex-a57"], "tcg"),
        *KERNEL,
        *TAIL,
    ]


def test_tcg_translation_cache_size() -> None:
    argv = build_argv(spec(Arch.ARM64), PATHS, "tcg", 32)
    assert argv[argv.index("-accel") + 1] == "tcg,tb-size=32"
    # 0 is QEMU's own default: the argv stays as before; KVM has no translation cache
    assert "tcg" in build_argv(spec(Arch.ARM64), PATHS, "tcg", 0)
    kvm = build_argv(spec(Arch.X86_64), PATHS, "kvm", 32)
    assert kvm[kvm.index("-accel") + 1] == "kvm"
    with pytest.raises(DriverError, match="tb-size"):
        build_argv(spec(Arch.ARM64), PATHS, "tcg", 99999)


def test_arm64_kvm() -> None:
    argv = build_argv(spec(Arch.ARM64), PATHS, "kvm")
    assert argv[9:15] == ["-machine", "virt,gic-version=host", "-cpu", "host", "-accel", "kvm"]


def test_disk_boot_without_kernel_or_seed() -> None:
    x86 = build_argv(spec(Arch.X86_64, kernel=None, initrd=None, seed_iso=None), PATHS, "tcg")
    assert "-kernel" not in x86 and "-append" not in x86 and "-bios" not in x86
    assert not any("id=seed" in a for a in x86)
    arm = build_argv(spec(Arch.ARM64, kernel=None, initrd=None, seed_iso=None), PATHS, "tcg")
    assert arm[arm.index("-bios") + 1] == "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd"


def test_commas_in_paths_are_escaped() -> None:
    argv = build_argv(spec(Arch.X86_64, boot_disk=Path("/d/a,b.qcow2")), PATHS, "tcg")
    assert any(a.startswith("if=none,id=root,file=/d/a,,b.qcow2,format") for a in argv)


def test_runtime_dir_appears_in_the_command_line() -> None:
    argv = build_argv(spec(Arch.X86_64), PATHS, "tcg")
    assert f"{D}/qemu.pid" in argv  # how observe() tells our QEMU from a reused pid
    assert "-daemonize" not in argv  # the sandbox forbids its fork: the launcher starts it
    assert "-nic" not in argv and "-netdev" not in argv


NICS = (NicSpec("ct0123456789a0", "52:54:00:12:34:56"),
        NicSpec("ct0123456789a1", "52:54:00:ab:cd:ef"))  # fmt: skip


def test_nics_are_taps_the_launcher_opened() -> None:
    argv = build_argv(spec(Arch.X86_64, netns="cn-0123456789", nics=NICS), PATHS, "tcg")
    net = [
        "-netdev", "tap,id=net0,fd=5",
        "-device", "virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56,romfile=",
        "-netdev", "tap,id=net1,fd=6",
        "-device", "virtio-net-pci,netdev=net1,mac=52:54:00:ab:cd:ef,romfile=",
    ]  # fmt: skip
    rng = TAIL.index("virtio-rng-pci") - 1
    assert argv == [
        *head("qemu-system-x86_64", ["-machine", "q35", "-cpu", "max"], "tcg"),
        *KERNEL,
        *TAIL[:rng],
        *net,
        *TAIL[rng:],
    ]  # fmt: skip


def test_confined_in_a_network_namespace() -> None:
    s = spec(Arch.X86_64, netns="cn-0123456789", nics=NICS)
    qemu = build_argv(s, PATHS, "tcg")
    groups = (Path("/sys/fs/cgroup/unified/cumulo/i-1"), Path("/sys/fs/cgroup/memory/cumulo/i-1"))
    c = Confinement(1900000007, groups, "/venv/bin/python", "/usr/bin/qemu-system-x86_64")
    assert confine(s, PATHS, qemu, c) == [
        "/venv/bin/python", "-I", "-S", str(LAUNCHER),
        "--uid", "1900000007", "--gid", "1900000007",
        "--cgroup", "/sys/fs/cgroup/unified/cumulo/i-1",
        "--cgroup", "/sys/fs/cgroup/memory/cumulo/i-1",
        "--netns", "cn-0123456789",
        "--listen", f"3={D}/qmp.sock", "--listen", f"4={D}/ser.sock",
        "--tap", "5=ct0123456789a0", "--tap", "6=ct0123456789a1",
        "--", "/usr/bin/qemu-system-x86_64", *qemu[1:],
    ]  # fmt: skip


def test_confined_without_namespace_nor_cgroup() -> None:
    s = spec(Arch.X86_64)
    qemu = build_argv(s, PATHS, "tcg")
    argv = confine(s, PATHS, qemu, Confinement(1900000001, (), "/p", "/q"))
    assert argv[:4] == ["/p", "-I", "-S", str(LAUNCHER)]
    assert "--cgroup" not in argv and "--netns" not in argv
    assert argv[argv.index("--") + 1:] == ["/q", *qemu[1:]]


def test_paths() -> None:
    assert PATHS.vm_id == VM
    assert str(PATHS.stop_marker) == f"{D}/stop-requested"
    assert str(PATHS.console_log) == f"{D}/console.log"
    assert str(PATHS.serial_sock) == f"{D}/ser.sock"


VOL_A = VolumeAttachment("vol-0123456789abcdef0",
                         LocalFile(Path("/var/lib/cumulo/volumes/a,b.qcow2")),
                         iops=500, mbps=40)  # fmt: skip
VOL_B = VolumeAttachment("vol-00000000000000001", LocalFile(Path("/v/b.qcow2")),
                         write_error="report")
VOL_NBD = VolumeAttachment("vol-000000000000000aa",
                           NbdExport("10.250.0.3", 10810, "s3cr3t", "ab" * 32), mbps=8)


def test_a_volume_of_another_host_opens_over_nbd_with_tls_and_its_key_file() -> None:
    argv = build_argv(spec(Arch.X86_64, volumes=(VOL_NBD,)), PATHS, "tcg")
    objects = [json.loads(argv[i + 1]) for i, a in enumerate(argv) if a == "-object"
               and argv[i + 1].startswith("{")]
    assert {"qom-type": "tls-creds-psk", "id": "vol-000000000000000aa-tls",
            "endpoint": "client", "dir": f"{D}/psk-vol-000000000000000aa",
            "username": "vol-000000000000000aa"} in objects
    (dev,) = [json.loads(argv[i + 1]) for i, a in enumerate(argv) if a == "-blockdev"
              and "vol-000000000000000aa" in argv[i + 1]]
    nbd = dev["file"]
    assert nbd["driver"] == "nbd" and nbd["export"] == "s3cr3t"
    assert nbd["server"] == {"type": "inet", "host": "10.250.0.3", "port": "10810"}
    assert nbd["tls-creds"] == "vol-000000000000000aa-tls"
    assert "ab" * 32 not in " ".join(argv)  # the key is in the file, not on the command line


def test_cold_attached_volumes_are_throttled_in_hotplug_slots() -> None:
    argv = build_argv(spec(Arch.X86_64, volumes=(VOL_A, VOL_B)), PATHS, "tcg")
    qmp = argv.index("socket,id=qmp,fd=3,server=on,wait=off") - 1
    assert argv[qmp - 12 : qmp] == [
        "-object", '{"qom-type":"throttle-group","id":"vol-0123456789abcdef0-tg",'
        '"limits":{"iops-total":500,"bps-total":41943040}}',
        "-blockdev", '{"driver":"throttle","node-name":"vol-0123456789abcdef0-thr",'
        '"throttle-group":"vol-0123456789abcdef0-tg","file":{"driver":"qcow2",'
        '"node-name":"vol-0123456789abcdef0-fmt","discard":"unmap",'
        '"cache":{"direct":false,"no-flush":false},'
        '"file":{"driver":"file","filename":"/var/lib/cumulo/volumes/a,b.qcow2"}}}',
        "-device", "virtio-blk-pci,id=vol-0123456789abcdef0,drive=vol-0123456789abcdef0-thr,"
        "serial=vol0123456789abcdef0,bus=hp0,werror=stop",
        "-object", '{"qom-type":"throttle-group","id":"vol-00000000000000001-tg","limits":{}}',
        "-blockdev", '{"driver":"throttle","node-name":"vol-00000000000000001-thr",'
        '"throttle-group":"vol-00000000000000001-tg","file":{"driver":"qcow2",'
        '"node-name":"vol-00000000000000001-fmt","discard":"unmap",'
        '"cache":{"direct":false,"no-flush":false},'
        '"file":{"driver":"file","filename":"/v/b.qcow2"}}}',
        "-device", "virtio-blk-pci,id=vol-00000000000000001,drive=vol-00000000000000001-thr,"
        "serial=vol00000000000000001,bus=hp1,werror=report",
    ]  # fmt: skip
    assert argv[qmp - 13] == "pcie-root-port,id=hp7,chassis=8,io-reserve=0"
    assert len(VOL_A.serial) == 20  # all virtio-blk carries: the guest sees it whole


def test_too_many_volumes_is_a_clear_error() -> None:
    vols = tuple(VolumeAttachment(f"vol-{i:017x}", LocalFile(Path(f"/v/{i}")))
                 for i in range(MAX_VOLUMES + 1))
    with pytest.raises(DriverError, match=f"at most {MAX_VOLUMES}"):
        build_argv(spec(Arch.X86_64, volumes=vols), PATHS, "tcg")


def test_the_boot_disks_write_error_policy_and_a_bad_one() -> None:
    argv = build_argv(spec(Arch.X86_64, boot_write_error="report"), PATHS, "tcg")
    assert any(a.startswith("if=none,id=root,") and a.endswith(",werror=report") for a in argv)
    with pytest.raises(DriverError, match="invalid disk write-error policy 'ignore'"):
        build_argv(spec(Arch.X86_64, boot_write_error="ignore"), PATHS, "tcg")
