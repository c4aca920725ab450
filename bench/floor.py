"""The bare-QEMU floor: the tiny image booted by hand, to the same SSH readiness as cumulo.

The same kernel, initrd and root disk (a fresh qcow2 overlay over the image's rootfs each run),
the same NoCloud seed format (built by cumulo's own seed writer, with the bench's key), the same
accelerator, vCPUs and RAM as cumulo's instance, and the same DHCP path: a bridge with a
dnsmasq configured by cumulo's own `render_conf` (static lease for the guest's MAC) and a
permanent neighbour entry for the guest, like cumulo sets. Everything lives in a namespace
this module creates (`cbfl-<pid>`) and deletes; SSH runs inside it (`ip netns exec`).

Not included (they are cumulo's own costs, measured against this): the API, the agent and its
reconcile loop, overlay + seed creation (done before the clock starts here), firewall, tc, the
loopback forwarder, and the extra devices of cumulo's argv (QMP, pcie-root-ports, ...).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.cloud import LineWatch, image_dir, wait_ssh
from cumulo.agent.net import dnsmasq
from cumulo.agent.net.plan import Host, Net
from cumulo.agent.storage.seed import build_seed_iso

GUEST_IP = "10.250.0.10"
GATEWAY = "10.250.0.1"
GUEST_MAC = "52:54:00:fb:00:10"
BRIDGE = "cbflbr0"
TAP = "cbfltap0"
MARKERS = ("cumulo-tiny: initramfs started", "cumulo-tiny: switching", "cumulo-tiny: ready")


def _ip(*args: str, stdin: str | None = None) -> None:
    subprocess.run(["ip", *args], input=stdin, text=True, check=True, capture_output=True)


def floor_argv(arch: str, img: Path, disk: Path, seed: Path, console: Path, accel: str,
               ram_mib: int, vcpus: int = 1) -> list[str]:
    """The hand-written QEMU command line (pure): only what the guest needs."""
    cmdline = json.loads((img / "image.json").read_text())["kernel_cmdline"] \
        if (img / "image.json").exists() else ""
    if arch == "x86_64":
        machine = ["qemu-system-x86_64", "-machine", "q35",
                   "-cpu", "host" if accel == "kvm" else "max"]
    else:
        machine = ["qemu-system-aarch64", "-machine", "virt" + (",gic-version=host"
                                                                 if accel == "kvm" else ""),
                   "-cpu", "host" if accel == "kvm" else "cortex-a57"]
    return [
        *machine, "-nodefaults", "-no-user-config", "-display", "none",
        "-accel", accel, "-smp", str(vcpus), "-m", str(ram_mib),
        "-chardev", f"file,id=console,path={console}", "-serial", "chardev:console",
        "-kernel", str(img / "vmlinuz"), "-initrd", str(img / "initrd.img"),
        "-append", cmdline,
        "-drive", f"if=none,id=root,file={disk},format=qcow2,cache=writeback",
        "-device", "virtio-blk-pci,drive=root",
        "-drive", f"if=none,id=seed,file={seed},format=raw,readonly=on",
        "-device", "virtio-blk-pci,drive=seed",
        "-netdev", f"tap,id=net0,ifname={TAP},script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=net0,mac={GUEST_MAC},romfile=",
        "-device", "virtio-rng-pci",
    ]


def floor_net() -> Net:
    """The floor's one network, as cumulo's dnsmasq config writer takes it."""
    guest = Host("floor", "floor.floor.bench", GUEST_IP, GUEST_MAC)
    # dhcp_hosts: dnsmasq hands out leases only to the MACs listed there (on a network spanning
    # hosts, each host answers for its own instances); without it the guest got no address.
    return Net(id="floor", bridge=BRIDGE, cidr="10.250.0.0/24", gateway=GATEWAY, prefixlen=24,
               netmask="255.255.255.0", network_addr="10.250.0.0", domain="floor.bench",
               hosts=(guest,), dhcp_hosts=(guest,))


@dataclass
class Floor:
    """One namespace + bridge + tap + dnsmasq, reused by every floor boot of a run."""

    work: Path
    key: Path
    netns: str = ""

    @property
    def ns_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns]

    def setup(self) -> None:
        self.netns = f"cbfl-{os.getpid()}"
        _ip("netns", "add", self.netns)
        subprocess.run([*self.ns_prefix, "sysctl", "-q", "-w", "net.ipv4.ip_forward=0",
                        "net.ipv6.conf.all.disable_ipv6=1"], check=True, capture_output=True)
        _ip("-n", self.netns, "-batch", "-", stdin="\n".join([
            "link set lo up",
            f"link add {BRIDGE} type bridge forward_delay 0 stp_state 0",
            f"addr add {GATEWAY}/24 dev {BRIDGE}",
            f"link set {BRIDGE} up",
            f"tuntap add dev {TAP} mode tap",
            f"link set {TAP} master {BRIDGE} up",
            f"neigh replace {GUEST_IP} lladdr {GUEST_MAC} dev {BRIDGE} nud permanent",
        ]) + "\n")
        net = floor_net()
        self.dns = dnsmasq.DnsmasqPaths(self.work / "dnsmasq")
        self.dns.dir.mkdir(parents=True, exist_ok=True)
        self.dns.conf.write_text(dnsmasq.render_conf(net, self.dns))
        self.dns.hosts.write_text(dnsmasq.render_hosts(net))
        self.dns.addn_hosts.write_text(dnsmasq.render_addn_hosts(net))
        subprocess.run([*self.ns_prefix, "dnsmasq", f"--conf-file={self.dns.conf}"],
                       check=True, capture_output=True)

    def teardown(self) -> None:
        if not self.netns:
            return
        pid = dnsmasq.live_pid(self.dns) if hasattr(self, "dns") else None
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        subprocess.run(["ip", "netns", "delete", self.netns], capture_output=True)
        self.netns = ""

    def boot(self, arch: str, accel: str, ram_mib: int, timeout: float = 180) -> dict[str, float]:
        """One boot to SSH; returns the seconds from QEMU's launch to each milestone."""
        img = image_dir(arch).resolve()
        run = Path(tempfile.mkdtemp(prefix=f"floor-{arch}-", dir=self.work))
        disk, seed, console = run / "disk.qcow2", run / "seed.iso", run / "console.log"
        t_prep = time.monotonic()
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
                        "-b", str(img / "rootfs.qcow2"), str(disk)], check=True)
        pub = Path(str(self.key) + ".pub").read_text()
        build_seed_iso(seed, instance_id=f"floor-{run.name}", hostname="floor",
                       ssh_public_keys=[pub])
        prep_s = time.monotonic() - t_prep
        argv = [*self.ns_prefix, *floor_argv(arch, img, disk, seed, console, accel, ram_mib)]
        watch = LineWatch(console, MARKERS)
        t0 = time.monotonic()
        qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=open(run / "qemu.stderr", "wb"))  # noqa: SIM115
        try:
            with _watching(watch):
                t_ssh = wait_ssh(self.key, f"cumulo@{GUEST_IP}", timeout, prefix=self.ns_prefix)
            if qemu.poll() is not None:
                raise RuntimeError(f"floor QEMU exited: {(run / 'qemu.stderr').read_text()}")
        finally:
            qemu.terminate()
            try:
                qemu.wait(10)
            except subprocess.TimeoutExpired:
                qemu.kill()
                qemu.wait()
            with contextlib.suppress(OSError):
                for f in run.iterdir():
                    f.unlink()
                run.rmdir()
        out = {"ssh_s": t_ssh - t0, "prep_s": prep_s}
        for m, t in watch.seen.items():
            out[_marker_key(m)] = t - t0
        return out


def _marker_key(marker: str) -> str:
    return {"cumulo-tiny: initramfs started": "initramfs_s",
            "cumulo-tiny: switching": "rootfs_s",
            "cumulo-tiny: ready": "guest_ready_s"}[marker]


@contextlib.contextmanager
def _watching(*watches: LineWatch, extra: object = None) -> Iterator[None]:
    """Poll the watches every 20 ms in a thread while the body runs."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            for w in watches:
                w.poll()
            if callable(extra):
                extra()
            stop.wait(0.02)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()
        for w in watches:
            w.poll()


@contextlib.contextmanager
def floor_network(work: Path) -> Iterator[Floor]:
    key = work / "floor_key"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True)
    fl = Floor(work=work, key=key)
    try:
        fl.setup()
        yield fl
    finally:
        fl.teardown()
