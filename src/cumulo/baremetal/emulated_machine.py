"""The "physical" machine behind an emulated BMC: one QEMU VM (TCG) with a disk of its own.

Power is QEMU's process: on means a QEMU runs for this machine (found by its pidfile and its
`-name`, so an emulator restart re-adopts it), off means none does. What a BMC keeps across
power cycles (the boot override, the inserted virtual media) lives in `state.json` beside
the disk, written atomically, so an emulator restart keeps it too.

The machine has one NIC (its MAC: switch_port.mac_of), whose far end depends on what it
boots, as a real server's switch port is moved between networks (Ironic's network flip):
booted from virtual media (the deploy or wipe ramdisk) it is on the provisioning network;
booted from its disk (a deployed server) it is on its switch port, a tap in the port host's
namespace that the host's agent plugs into the instance's network while the node is active.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cumulo.agent.net.cmd import NetError
from cumulo.baremetal import switch_port

QEMU = "qemu-system-x86_64"
STOP_WAIT_S = 10.0
BOOT_TARGETS = ("None", "Hdd", "Cd", "Pxe")
BOOT_ENABLED = ("Disabled", "Once", "Continuous")
# Where a machine's provisioning NIC reaches the API: QEMU user networking, `restrict=on`
# (nothing NATed out, nothing else reachable) and one guestfwd from this address, port 80, to
# the API's loopback port. `cmd:` runs one busybox nc per connection (a chardev target would
# carry only the first connection). A real deployment uses a provisioning VLAN instead.
PROVISION_ADDR = "10.0.2.100"
PROVISION_GUEST_CIDR = "10.0.2.15/24"
_NETNS = re.compile(r"^[A-Za-z0-9_-]{1,63}\Z")


class MachineError(Exception):
    """A power or media operation the machine cannot do (the BMC answers it with an error)."""


@dataclass(frozen=True)
class MachineSpec:
    system_id: str  # a Redfish resource id: [A-Za-z0-9_-]
    vcpus: int
    ram_mib: int
    disk_gib: int


@dataclass
class BmcState:
    boot_target: str = "None"
    boot_enabled: str = "Disabled"
    media_image: str = ""  # the URL the media was inserted from; "" when none is
    extra: dict[str, Any] = field(default_factory=dict)


class EmulatedMachine:
    def __init__(self, spec: MachineSpec, state_dir: Path,
                 provision_port: int | None = None, port_netns: str | None = None) -> None:
        self.spec = spec
        self.provision_port = provision_port
        if port_netns is not None and not _NETNS.match(port_netns):
            raise ValueError(f"invalid network namespace name {port_netns!r}")
        self.port_netns = port_netns  # the port host's namespace (None: no switch port)
        self.mac = switch_port.mac_of(spec.system_id)
        self.dir = state_dir / spec.system_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.disk = self.dir / "disk.qcow2"
        self.media = self.dir / "media.iso"
        self.pidfile = self.dir / "qemu.pid"
        self.qmp_sock = self.dir / "qmp.sock"
        self.console_log = self.dir / "console.log"
        self.last_argv = self.dir / "last-argv.json"  # what the last power-on ran (tests read it)
        self._state_file = self.dir / "state.json"
        if not self.disk.exists():
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(self.disk),
                            f"{spec.disk_gib}G"], check=True, timeout=30)
        self.state = self._load_state()

    # --- power -----------------------------------------------------------------------------

    @property
    def qemu_name(self) -> str:
        return f"cumulo-bm-{self.spec.system_id}"

    def pid(self) -> int | None:
        """The pid of this machine's QEMU, or None when it is powered off."""
        try:
            pid = int(self.pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        # A reused pid of another process is not our machine.
        return pid if self.qemu_name.encode() in cmdline and _alive(pid) else None

    def power_state(self) -> str:
        return "On" if self.pid() is not None else "Off"

    def power_on(self) -> None:
        if self.pid() is not None:
            return
        tap_fd = None
        if self.port_netns is not None and not self.boots_media():
            try:
                tap_fd = switch_port.open_port(self.port_netns, self.mac)
            except (OSError, NetError) as e:
                raise MachineError(f"the machine's switch port did not open: {e}") from e
        try:
            argv = self.argv(tap_fd)
            self.last_argv.write_text(json.dumps(argv))
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                                  pass_fds=() if tap_fd is None else (tap_fd,))
        finally:
            if tap_fd is not None:
                os.close(tap_fd)  # QEMU holds its own: the tap goes with it
        if done.returncode != 0:
            raise MachineError(f"the machine did not power on: {done.stderr.strip()[-300:]}")
        if self.state.boot_enabled == "Once":
            self.state.boot_enabled, self.state.boot_target = "Disabled", "None"
            self._save_state()

    def force_off(self) -> None:
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # pulling the plug: what ForceOff means
        self._wait_gone(pid)
        self.pidfile.unlink(missing_ok=True)

    def graceful_shutdown(self) -> None:
        """ACPI power button; the OS decides (a machine with no OS keeps running)."""
        if self.pid() is not None:
            self._qmp("system_powerdown")

    def force_restart(self) -> None:
        if self.pid() is None:
            self.power_on()
        else:
            self._qmp("system_reset")

    def boots_media(self) -> bool:
        """Whether the next power-on boots the virtual media (the CD), not the disk."""
        return self.state.boot_enabled != "Disabled" and self.state.boot_target == "Cd"

    def argv(self, tap_fd: int | None = None) -> list[str]:
        """QEMU's command line for a power-on with the current boot override and media;
        `tap_fd`: the open switch port, the NIC's far end when it boots its disk."""
        s = self.spec
        argv = [QEMU, "-name", self.qemu_name, "-machine", "q35", "-accel", "tcg",
                "-cpu", "max", "-smp", str(s.vcpus), "-m", str(s.ram_mib),
                "-nodefaults", "-no-user-config", "-display", "none",
                "-drive", f"if=virtio,format=qcow2,file={_opt(self.disk)}",
                "-serial", f"file:{_opt(self.console_log)}",
                "-qmp", f"unix:{_opt(self.qmp_sock)},server=on,wait=off",
                "-pidfile", str(self.pidfile), "-daemonize"]
        if self.state.media_image and self.media.exists():
            argv += ["-drive", f"if=ide,media=cdrom,readonly=on,file={_opt(self.media)}"]
        if self.boots_media() and self.provision_port is not None:
            fwd = f"tcp:{PROVISION_ADDR}:80-cmd:busybox nc 127.0.0.1 {int(self.provision_port)}"
            argv += ["-netdev", f"user,id=nic,restrict=on,guestfwd={fwd}",
                     "-device", f"virtio-net-pci,netdev=nic,mac={self.mac}"]
        elif tap_fd is not None:
            argv += ["-netdev", f"tap,id=nic,fd={int(tap_fd)}",
                     "-device", f"virtio-net-pci,netdev=nic,mac={self.mac},romfile="]
        target = self.state.boot_target if self.state.boot_enabled != "Disabled" else "None"
        argv += ["-boot", {"Cd": "order=d", "Pxe": "order=n"}.get(target, "order=c")]
        return argv

    # --- boot override and virtual media ---------------------------------------------------

    def set_boot(self, target: str | None, enabled: str | None) -> None:
        if target is not None and target not in BOOT_TARGETS:
            raise MachineError(f"unsupported BootSourceOverrideTarget {target!r}")
        if enabled is not None and enabled not in BOOT_ENABLED:
            raise MachineError(f"unsupported BootSourceOverrideEnabled {enabled!r}")
        if target is not None:
            self.state.boot_target = target
        if enabled is not None:
            self.state.boot_enabled = enabled
        self._save_state()

    def insert_media(self, url: str, content: bytes) -> None:
        tmp = self.media.with_suffix(".part")
        tmp.write_bytes(content)
        tmp.replace(self.media)
        self.state.media_image = url
        self._save_state()

    def eject_media(self) -> None:
        self.media.unlink(missing_ok=True)
        self.state.media_image = ""
        self._save_state()

    # --- internals -------------------------------------------------------------------------

    def _load_state(self) -> BmcState:
        try:
            return BmcState(**json.loads(self._state_file.read_text()))
        except (OSError, ValueError, TypeError):
            return BmcState()

    def _save_state(self) -> None:
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.state)))
        tmp.replace(self._state_file)

    def _qmp(self, command: str) -> None:
        """One QMP command on a fresh connection (the BMC holds no session open)."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(str(self.qmp_sock))
                f = sock.makefile("rwb")
                f.readline()  # the greeting
                for cmd in ("qmp_capabilities", command):
                    f.write(json.dumps({"execute": cmd}).encode() + b"\n")
                    f.flush()
                    while True:  # skip events until the command's answer
                        answer = json.loads(f.readline())
                        if "return" in answer or "error" in answer:
                            break
                    if "error" in answer:
                        raise MachineError(f"{cmd}: {answer['error'].get('desc')}")
        except (OSError, ValueError) as e:
            raise MachineError(f"the machine's monitor did not answer: {e}") from e

    @staticmethod
    def _wait_gone(pid: int) -> None:
        deadline = time.monotonic() + STOP_WAIT_S
        while time.monotonic() < deadline:
            # A daemonized QEMU is not our child: nothing to reap, just wait for it to go.
            if not _alive(pid):
                return
            time.sleep(0.05)
        raise MachineError(f"QEMU (pid {pid}) did not stop")


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie left for a parent that does not reap is not running).
    A killed QEMU's main thread turns zombie before its other threads have exited, and its
    files (the disk, with its image lock) close only with the last of them: it runs until
    it is the only task left."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[-1].split()[0] != "Z":
            return True
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except OSError:
        return False


def _opt(path: Path) -> str:
    """A path as a QEMU option value: a comma is written twice."""
    return str(path).replace(",", ",,")
