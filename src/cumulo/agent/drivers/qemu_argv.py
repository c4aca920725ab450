"""The QEMU command line of one VM, built by a pure function (spec + paths + accel -> argv).

No I/O here: golden tests pin the exact argv. The QEMU driver adds nothing to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cumulo.agent.drivers.base import (
    MAX_VOLUMES,
    DriverError,
    NbdExport,
    VMSpec,
    VolumeAttachment,
)
from cumulo.domain.arch import Arch
from cumulo.domain.tcg import accel_option

Accel = Literal["kvm", "tcg"]

# Linux limits sun_path to 108 bytes including the terminating NUL.
UNIX_PATH_MAX = 108

# QEMU 7.2's seccomp filter: everything it offers to deny (see `-sandbox` in qemu(1)).
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
QMP_FD = 3
NBD_RECONNECT_S = 5  # a volume's NBD client: how long I/O waits for a lost storage host
SERIAL_FD = 4
TAP_FD0 = 5
LAUNCHER = Path(__file__).with_name("qemu_exec.py")

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
    def serial_sock(self) -> Path:
        """The serial port, served by QEMU to one client at a time (the agent's SerialHub)."""
        return self.dir / "ser.sock"  # as long as qmp.sock: the same path length limit

    @property
    def pidfile(self) -> Path:
        return self.dir / "qemu.pid"

    @property
    def console_log(self) -> Path:
        return self.dir / "console.log"

    def psk_dir(self, volume_id: str) -> Path:
        """Where the TLS-PSK key of a volume over NBD is (`keys.psk`, the VM's, read-only)."""
        return self.dir / f"psk-{volume_id}"

    @property
    def stop_marker(self) -> Path:
        """Written BEFORE cumulo stops the VM on purpose: no process + marker = STOPPED."""
        return self.dir / "stop-requested"

    @property
    def spec_json(self) -> Path:
        return self.dir / "spec.json"

    @property
    def migration_json(self) -> Path:
        """This host's side of a migration of the VM (qemu_migration.Record)."""
        return self.dir / "migration.json"

    @property
    def launch_log(self) -> Path:
        """QEMU's stderr until it has daemonized (launch errors end up here)."""
        return self.dir / "qemu.stderr"

    @property
    def last_pid(self) -> Path:
        """The pid of the latest launch (QEMU removes its own pidfile when it exits cleanly)."""
        return self.dir / "last.pid"


def build_argv(spec: VMSpec, paths: VMPaths, accel: Accel, tb_size_mib: int = 0) -> list[str]:
    """QEMU's own argv (argv[0] is the binary name); `confine` wraps it in its launcher.

    `tb_size_mib`: TCG's translation cache (`-accel tcg,tb-size=N`; 0: QEMU's default).

    QEMU runs in the foreground under its seccomp sandbox (no fork, no exec, no setuid, no
    scheduler or resource changes, no obsolete syscalls) and opens no socket path and no tap
    by name: the launcher hands it the listening QMP and serial sockets and the taps on fixed
    fd numbers (QMP_FD, SERIAL_FD, TAP_FD0 + NIC index).
    """
    argv: list[str] = [
        spec.arch.qemu_binary,
        "-name",
        # debug-threads: each vCPU thread is named ("CPU 0/TCG"), in ps and /proc, so that
        # its pinning (a dedicated host's) can be seen.
        f"guest={spec.vm_id},debug-threads=on",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-sandbox",
        SANDBOX,
        *_machine(spec.arch, accel),
        "-accel",
        _accel(accel, tb_size_mib),
        "-smp",
        str(spec.vcpus),
        "-m",
        str(spec.ram_mib),
        # The serial port is a socket for the interactive console; QEMU logs what the guest
        # writes to console.log whether a client is connected or not (output is dropped, not
        # held, while none is), so the console log stays complete.
        "-chardev",
        f"socket,id=console,fd={SERIAL_FD},server=on,wait=off,"
        f"logfile={_opt(paths.console_log)},logappend=on",
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
        f"if=none,id=root,file={_opt(spec.boot_disk)},format=qcow2,cache=writeback,discard=unmap"
        f",werror={_write_error(spec.boot_write_error)}",
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
            f"tap,id=net{i},fd={TAP_FD0 + i}",
            "-device",
            f"virtio-net-pci,netdev=net{i},mac={_opt(nic.mac)},romfile=",
        ]
    argv += ["-device", "virtio-rng-pci"]
    argv += volume_argv(spec, paths)
    argv += [
        "-chardev",
        f"socket,id=qmp,fd={QMP_FD},server=on,wait=off",
        "-mon",
        "chardev=qmp,mode=control",
        # A guest poweroff pauses QEMU (status "shutdown") instead of exiting, so the driver
        # can tell a guest poweroff (SHUTDOWN) from a dead process (CRASHED).
        "-action",
        "shutdown=pause",
        "-pidfile",
        str(paths.pidfile),
    ]
    return argv


@dataclass(frozen=True)
class Confinement:
    """Who the VM's QEMU runs as and where (see qemu_confine, qemu_cgroup, qemu_exec)."""

    uid: int
    cgroups: tuple[Path, ...]  # its v2 cgroup, and its v1 ones on a hybrid host
    python: str  # the interpreter that runs the launcher
    binary: str  # QEMU's absolute path


def confine(spec: VMSpec, paths: VMPaths, argv: list[str], c: Confinement) -> list[str]:
    """`argv` (from build_argv) started by the launcher: in `c.cgroups`, then inside
    `spec.netns` when set (the launcher enters it itself: see qemu_exec), as `c.uid`."""
    launcher = [c.python, "-I", "-S", str(LAUNCHER), "--uid", str(c.uid), "--gid", str(c.uid)]
    for cgroup in c.cgroups:
        launcher += ["--cgroup", str(cgroup)]
    if spec.netns:
        launcher += ["--netns", spec.netns]
    launcher += ["--listen", f"{QMP_FD}={paths.qmp_sock}",
                 "--listen", f"{SERIAL_FD}={paths.serial_sock}"]
    for i, nic in enumerate(spec.nics):
        launcher += ["--tap", f"{TAP_FD0 + i}={nic.tap}"]
    return [*launcher, "--", c.binary, *argv[1:]]


# -- block volumes ---------------------------------------------------------------------------
# Each volume is a chain of block nodes: file -> qcow2 ("<vol>-fmt") -> throttle ("<vol>-thr",
# in throttle group object "<vol>-tg"), under a virtio-blk-pci device whose id is the volume
# id, plugged into one of MAX_VOLUMES PCIe root ports "hp0".. (hot-pluggable slots on q35 and
# arm64 virt). The same pure functions feed argv (cold attach) and QMP (hot-plug).


def hotplug_port(i: int) -> str:
    return f"hp{i}"


def fmt_node(volume_id: str) -> str:
    return f"{volume_id}-fmt"


def top_node(volume_id: str) -> str:
    return f"{volume_id}-thr"


def spare_node(volume_id: str) -> str:
    """The other name of a volume's NBD client node: an online grow opens a new connection
    (the only way QEMU 7.2's client learns a new export size) under the name not in use,
    then points the throttle node at it, so the names alternate from grow to grow."""
    return f"{volume_id}-nbd"


def throttle_group_id(volume_id: str) -> str:
    return f"{volume_id}-tg"


def throttle_group(att: VolumeAttachment) -> dict[str, Any]:
    """The `throttle-group` object (QMP object-add arguments). 0 = no cap."""
    limits: dict[str, int] = {}
    if att.iops > 0:
        limits["iops-total"] = att.iops
    if att.mbps > 0:
        limits["bps-total"] = att.mbps * 1024 * 1024
    return {"qom-type": "throttle-group", "id": throttle_group_id(att.volume_id), "limits": limits}


def tls_creds_id(volume_id: str) -> str:
    return f"{volume_id}-tls"


def tls_creds(volume_id: str, psk_dir: Path) -> dict[str, Any]:
    """The TLS-PSK client credentials of a volume over NBD (QMP object-add arguments): the
    identity is the volume id, the key is read from `psk_dir`/keys.psk."""
    return {"qom-type": "tls-creds-psk", "id": tls_creds_id(volume_id), "endpoint": "client",
            "dir": str(psk_dir), "username": volume_id}


_CACHE = {"direct": False, "no-flush": False}


def nbd_blockdev(volume_id: str, src: NbdExport, node: str) -> dict[str, Any]:
    """An NBD client node of the storage host's export (QMP blockdev-add arguments)."""
    return {
        "driver": "nbd", "node-name": node, "discard": "unmap",
        "cache": dict(_CACHE), "export": src.name, "tls-creds": tls_creds_id(volume_id),
        "server": {"type": "inet", "host": src.host, "port": str(src.port)},
        # A storage host that goes away: requests wait this long for it, then fail
        # (I/O errors in the guest); the client keeps reconnecting in the background.
        "reconnect-delay": NBD_RECONNECT_S,
    }  # fmt: skip


def volume_blockdev(att: VolumeAttachment) -> dict[str, Any]:
    """The volume's block node chain (QMP blockdev-add arguments): throttle over qcow2 over
    the local file, or throttle over an NBD client of the storage host's export (the qcow2
    is opened there: the export carries the guest's bytes)."""
    src = att.source
    inner: dict[str, Any]
    if isinstance(src, NbdExport):
        inner = nbd_blockdev(att.volume_id, src, fmt_node(att.volume_id))
    else:
        inner = {
            "driver": "qcow2", "node-name": fmt_node(att.volume_id), "discard": "unmap",
            "cache": dict(_CACHE), "file": {"driver": "file", "filename": str(src.path)},
        }  # fmt: skip
    return {
        "driver": "throttle",
        "node-name": top_node(att.volume_id),
        "throttle-group": throttle_group_id(att.volume_id),
        "file": inner,
    }


def volume_device(att: VolumeAttachment, port: int) -> dict[str, Any]:
    """The guest-visible disk (QMP device_add arguments)."""
    return {
        "driver": "virtio-blk-pci",
        "id": att.volume_id,
        "drive": top_node(att.volume_id),
        "serial": att.serial,
        "bus": hotplug_port(port),
        "werror": _write_error(att.write_error),
    }


def volume_argv(spec: VMSpec, paths: VMPaths) -> list[str]:
    """The hot-plug ports, then each cold-attached volume in its own port (in spec order)."""
    if len(spec.volumes) > MAX_VOLUMES:
        raise DriverError(
            f"cannot start {spec.vm_id}: {len(spec.volumes)} volumes attached,"
            f" at most {MAX_VOLUMES} are supported"
        )
    argv: list[str] = []
    for i in range(MAX_VOLUMES):
        argv += ["-device", f"pcie-root-port,id={hotplug_port(i)},chassis={i + 1},io-reserve=0"]
    for i, att in enumerate(spec.volumes):
        dev = volume_device(att, i)
        if isinstance(att.source, NbdExport):
            creds = tls_creds(att.volume_id, paths.psk_dir(att.volume_id))
            argv += ["-object", json.dumps(creds, separators=(",", ":"))]
        argv += [
            "-object",
            json.dumps(throttle_group(att), separators=(",", ":")),
            "-blockdev",
            json.dumps(volume_blockdev(att), separators=(",", ":")),
            "-device",
            ",".join([dev["driver"], *(f"{k}={_opt(v)}" for k, v in dev.items() if k != "driver")]),
        ]
    return argv


def _machine(arch: Arch, accel: Accel) -> list[str]:
    if arch is Arch.X86_64:
        return ["-machine", "q35", "-cpu", "host" if accel == "kvm" else "max"]
    if accel == "kvm":
        return ["-machine", "virt,gic-version=host", "-cpu", "host"]
    return ["-machine", "virt", "-cpu", "cortex-a57"]


def _accel(accel: Accel, tb_size_mib: int) -> str:
    try:
        return accel_option(accel, tb_size_mib)
    except ValueError as e:
        raise DriverError(str(e)) from None


def _write_error(policy: str) -> str:
    """QEMU's werror= for a disk: `stop` pauses the VM on a failed write (it is retried when
    the VM runs again), `report` fails it in the guest. Read errors are always reported."""
    if policy not in ("stop", "report"):
        raise DriverError(f"invalid disk write-error policy {policy!r} (stop or report)")
    return policy


def _opt(path: Path | str) -> str:
    """A path (or name) as a QEMU option value: a comma is written twice."""
    return str(path).replace(",", ",,")
