"""`cumulo up --baremetal-nodes N`: N "physical" servers for the all-in-one cloud.

They are QEMU machines behind the Redfish BMC emulator (cumulo.baremetal.bmc_emulator), which
`cumulo up` runs as a child process on a loopback port of its own, and enrolled as nodes
bm-1..bm-N (system node-I) in the first zone. The port and the BMC password (random, 0600)
are kept in STATE/baremetal, so the nodes' enrolled Redfish URL and credentials stay right
across restarts; machines' disks and boot settings are kept there too. Each machine has a
provisioning NIC whose one reachable address forwards to the API's loopback port, from which
its deploy ramdisk fetches the image (see deploy_settings); booted from its disk, the
machine's NIC is on its switch port, a tap in the namespace of the zone's first local host
(`--port-host`: that host's agent plugs it into the instance's network). The emulator stops
with `cumulo up` (the kernel signals it if `cumulo up` is killed) and powers its machines off.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import select

from cumulo.allinone.paths import pid_alive, write_private
from cumulo.baremetal.emulated_machine import PROVISION_ADDR, MachineSpec
from cumulo.config import Settings
from cumulo.db.tables import BaremetalNodeRow
from cumulo.services import baremetal_nodes as nodes
from cumulo.services.context import Principal, Role, Services

# The size of each lab node: the least a tiny guest (and a deploy ramdisk) boots in, on TCG.
NODE_VCPUS, NODE_RAM_MIB, NODE_DISK_GIB = 1, 256, 2
MAX_NODES = 16
START_TIMEOUT_S = 60.0
USERNAME = "admin"


def deploy_settings(settings: Settings, api_url: str) -> Settings:
    """`settings` with the deploy URLs the emulated nodes need, unless the file sets them:
    BMCs (the emulator, on this machine) fetch the deploy ISO from the API's loopback URL,
    and the nodes' deploy ramdisks reach the API at the provisioning NIC's guestfwd."""
    b = settings.baremetal
    return settings.model_copy(update={"baremetal": b.model_copy(update={
        "media_url": b.media_url or api_url,
        "provision_url": b.provision_url or f"http://{PROVISION_ADDR}"})})


class Lab:
    def __init__(self, root: Path, count: int, port_host: str | None = None,
                 port_netns: str | None = None) -> None:
        if not 0 < count <= MAX_NODES:
            raise ValueError(f"--baremetal-nodes is 1 to {MAX_NODES}")
        self.dir = root / "baremetal"
        self.count = count
        self.port_host, self.port_netns = port_host, port_netns  # the nodes' cabling
        self.proc: subprocess.Popen[bytes] | None = None

    def specs(self) -> list[MachineSpec]:
        return [MachineSpec(f"node-{i}", NODE_VCPUS, NODE_RAM_MIB, NODE_DISK_GIB)
                for i in range(1, self.count + 1)]

    def port(self) -> int:
        """The emulator's port: chosen once, then kept (the nodes' enrolled URLs hold it)."""
        f = self.dir / "port"
        if not f.exists():
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_text(str(s.getsockname()[1]))
        return int(f.read_text())

    def password_file(self) -> Path:
        f = self.dir / "bmc-password"
        if not f.exists():
            write_private(f, secrets.token_urlsafe(24) + "\n")
        return f

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port()}"

    def enroll_missing(self, svc: Services) -> list[str]:
        """Enroll the lab's nodes the database does not know yet; their names."""
        password = self.password_file().read_text().strip()
        zone = svc.settings.zone_names()[0]
        with svc.db.session() as s:
            known = set(s.scalars(select(BaremetalNodeRow.name)))
        made = []
        for i, spec in enumerate(self.specs(), start=1):
            name = f"bm-{i}"
            if name in known:
                continue
            nodes.enroll(svc, Principal(Role.ADMIN), nodes.Enrollment(
                name=name, zone=zone, redfish_url=self.url(), system=spec.system_id,
                arch="x86_64", vcpus=spec.vcpus, ram_mib=spec.ram_mib, disk_gib=spec.disk_gib,
                username=USERNAME, password=password, port_host=self.port_host))
            made.append(name)
        return made

    def start(self, api_port: int) -> None:
        """Start the emulator (from the main thread: see exit_with_parent); its machines'
        provisioning NIC reaches the API on loopback port `api_port` (their deploys)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "cumulo.baremetal.bmc_emulator", "--state-dir",
                str(self.dir), "--listen", f"127.0.0.1:{self.port()}", "--username", USERNAME,
                "--password-file", str(self.password_file()), "--parent-pid", str(os.getpid()),
                "--provision-port", str(api_port)]
        if self.port_netns is not None:
            argv += ["--port-netns", self.port_netns]
        for spec in self.specs():
            argv += ["--node", f"{spec.system_id}:{spec.vcpus}:{spec.ram_mib}:{spec.disk_gib}"]
        with open(self.dir / "emulator.log", "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        (self.dir / "emulator.pid").write_text(str(self.proc.pid))

    def wait_listening(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port()), timeout=1):
                return
            if self.proc is None or self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.dir / "emulator.log").read_text(errors="replace")[-500:]
                raise RuntimeError(f"the BMC emulator did not start: {log}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        stop_leftovers(self.dir.parent)


def stop_leftovers(root: Path) -> int:
    """For `cumulo down`: the emulator of a `cumulo up` that died hard, and any machine
    left running by an emulator that died hard too. How many processes were stopped."""
    lab = root / "baremetal"
    stopped = 0
    pidfile = lab / "emulator.pid"
    if pidfile.exists():
        pid = int(pidfile.read_text())
        if pid_alive(pid, "bmc_emulator"):
            os.kill(pid, signal.SIGTERM)
            stopped += 1
        pidfile.unlink(missing_ok=True)
    for qemu_pid in lab.glob("*/qemu.pid") if lab.is_dir() else []:
        with contextlib.suppress(ValueError, OSError):
            pid = int(qemu_pid.read_text())
            if pid_alive(pid, f"cumulo-bm-{qemu_pid.parent.name}"):
                os.kill(pid, signal.SIGKILL)
                stopped += 1
    return stopped
