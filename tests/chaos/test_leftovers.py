"""The chaos suite's orphan check finds what it is there to find: orphans planted in a host's
state dir, its namespace and the machine's processes, and named in the pure comparison.
(No chaos mark: it is quick, and runs with the unit tests.)"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cumulo.agent.drivers.qemu_cgroup import VmCgroups
from cumulo.agent.net import names, namespace
from tests.chaos.leftovers import CloudView, HostHoldings, orphans, read_host

VM, GONE = "i-0123456789abcdef0", "i-fedcba98765432100"
NET, GONE_NET = "net-0123456789abcdef0", "net-fedcba98765432100"
VOL, GONE_VOL = "vol-0123456789abcdef0", "vol-fedcba98765432100"


def _cloud(state: str = "running") -> CloudView:
    return CloudView(instances={VM: ("h1", state)}, volumes={VOL: "available"},
                     attached=frozenset(), snapshots=frozenset(), networks=frozenset({NET}))


def _clean() -> HostHoldings:
    tap = names.tap_name(VM, 0)
    return HostHoldings(
        "h1", real=True, instance_dirs={VM}, run_dirs={VM}, volume_files={VOL},
        qemus={VM: [100]}, dnsmasq_dirs={NET}, dnsmasqs={NET: 101},
        links={tap, names.ifb_name(tap), names.bridge_name(NET)},
        nft_chains={"forward", f"to_{tap}", f"from_{tap}"})


def test_a_clean_host_has_no_orphans() -> None:
    assert orphans(_cloud(), [_clean()]) == []
    stopped = _clean()
    stopped.qemus, stopped.links, stopped.nft_chains = {}, {names.bridge_name(NET)}, set()
    assert orphans(_cloud("stopped"), [stopped]) == []


@pytest.mark.parametrize(("plant", "found"), [
    (lambda h: h.instance_dirs.add(GONE), f"files of instance {GONE}"),
    (lambda h: h.run_dirs.add(GONE), f"runtime dir of instance {GONE}"),
    (lambda h: h.cgroups.add(GONE), f"cgroup of instance {GONE}"),
    (lambda h: h.volume_files.add(GONE_VOL), f"volume file {GONE_VOL}"),
    (lambda h: h.snapshot_files.add("snap-0123456789abcdef0"), "snapshot file snap-"),
    (lambda h: h.temp_files.add("/x/volumes/v.qcow2.tmp"), "half-made file"),
    (lambda h: h.qemus.__setitem__(GONE, [102]), f"QEMU [102] of instance {GONE}"),
    (lambda h: h.qemus[VM].append(103), f"2 QEMU processes for running instance {VM}"),
    (lambda h: h.qemus.clear(), f"0 QEMU processes for running instance {VM}"),
    (lambda h: h.links.add(names.tap_name(GONE, 0)), "tap ct"),
    (lambda h: h.links.add(names.ifb_name(names.tap_name(GONE, 1))), "IFB cf"),
    (lambda h: h.links.add(names.bridge_name(GONE_NET)), "bridge/VXLAN cb"),
    (lambda h: h.nft_chains.add(f"to_{names.tap_name(GONE, 0)}"), "nftables chain to_ct"),
    (lambda h: h.dnsmasq_dirs.add(GONE_NET), f"dnsmasq files of removed network {GONE_NET}"),
    (lambda h: h.dnsmasqs.__setitem__(GONE_NET, 104), "dnsmasq 104 of removed network"),
    (lambda h: h.storage_daemons.append(f"qemu-storage-daemon --blockdev {GONE_VOL}"),
     "qemu-storage-daemon of no attached volume"),
    (lambda h: h.nbd_dirs.add(VOL), f"NBD export directory of volume {VOL} (not attached)"),
])
def test_each_planted_orphan_is_named(plant: object, found: str) -> None:
    h = _clean()
    plant(h)  # type: ignore[operator]
    (left,) = orphans(_cloud(), [h])
    assert found in left, left


def test_a_volume_on_two_hosts_or_on_none_is_named() -> None:
    other = HostHoldings("h2", real=True, volume_files={VOL})
    assert orphans(_cloud(), [_clean(), other]) == [f"volume {VOL} kept on 2 hosts: "
                                                    "['h1', 'h2']"]
    lost = _clean()
    lost.volume_files.clear()
    assert orphans(_cloud(), [lost]) == [f"volume {VOL} (available) has no file on any host"]


def test_the_edge_routes_exactly_each_public_address_to_its_host() -> None:
    cloud = _cloud()
    cloud.edge_routes.update({"10.0.0.5": "10.250.0.1", "10.0.0.6": "10.250.0.2"})
    assert orphans(cloud, [_clean()], {"10.0.0.5": "10.250.0.1",
                                       "10.0.0.6": "10.250.0.2"}) == []
    assert orphans(cloud, [_clean()], None) == []  # no edge read: nothing said of it
    assert orphans(cloud, [_clean()], {"10.0.0.5": "10.250.0.2", "10.0.0.7": "10.250.0.1"}) == [
        "edge: route to 10.0.0.5 via 10.250.0.2, whose instance runs behind 10.250.0.1",
        "edge: route to 10.0.0.7 via 10.250.0.1, to which no public address leads",
        "edge: no route to 10.0.0.6 (via 10.250.0.2), which a public address leads to"]


@pytest.fixture
def host_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cmo-lo-", dir="/tmp") as d:
        yield Path(d) / "hosts" / "h1"
        ns = names.netns_name(Path(d) / "hosts" / "h1")
        if namespace.exists(ns):
            asyncio.run(namespace.delete(ns))


def test_orphans_planted_on_a_real_host_are_found(host_dir: Path) -> None:
    """Files in the state dir, a tap and an nft chain in the host's namespace, a process
    named like QEMU that names the host's runtime dir: each read back and named."""
    if os.geteuid() != 0:
        pytest.skip("a host's namespace needs root")
    for d in (f"instances/{GONE}", f"run/{GONE}", "volumes", "snapshots",
              f"net/dnsmasq/{GONE_NET}"):
        (host_dir / d).mkdir(parents=True)
    (host_dir / "volumes" / f"{GONE_VOL}.qcow2").write_bytes(b"")
    (host_dir / "snapshots" / "snap-0123456789abcdef0.qcow2.tmp").write_bytes(b"")
    ns = names.netns_name(host_dir)
    asyncio.run(namespace.ensure(ns))
    tap = names.tap_name(GONE, 0)
    subprocess.run(["ip", "netns", "exec", ns, "ip", "tuntap", "add", tap, "mode", "tap"],
                   check=True)
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], check=True, text=True,
                   input=f"table inet cumulo {{\n\tchain to_{tap} {{\n\t}}\n}}\n")
    pidfile = host_dir / "run" / GONE / "qemu.pid"
    stray = subprocess.Popen(["qemu-system-x86_64", "-c", "import time; time.sleep(60)",
                              "-pidfile", str(pidfile)], executable=sys.executable)
    try:
        cmdline = Path(f"/proc/{stray.pid}/cmdline")
        deadline = time.monotonic() + 10
        while not cmdline.read_bytes().startswith(b"qemu-system") and \
                time.monotonic() < deadline:  # exec'd yet?
            time.sleep(0.01)
        found = "\n".join(orphans(_cloud(), [read_host(host_dir, real=True)]))
    finally:
        stray.kill()
        stray.wait()
    for what in (f"files of instance {GONE}", f"runtime dir of instance {GONE}",
                 f"volume file {GONE_VOL}", "half-made file", f"tap {tap}",
                 f"nftables chain to_{tap}", f"QEMU [{stray.pid}] of instance {GONE}",
                 f"dnsmasq files of removed network {GONE_NET}",
                 f"volume {VOL} (available) has no file"):
        assert what in found, found


def test_a_vm_cgroup_left_in_a_cgroup_v1_hierarchy_is_found(host_dir: Path) -> None:
    """On a hybrid host a VM's cgroups are in v1 hierarchies too: one left there is named."""
    groups = VmCgroups.for_runtime(host_dir / "run")
    if os.geteuid() != 0 or not groups.v1:
        pytest.skip("no writable cgroup v1 hierarchy of cpu/memory/pids here")
    left = next(iter(groups.v1.values())) / groups.parent / f"{GONE}.{groups.scope}"
    left.mkdir(parents=True)
    try:
        assert GONE in read_host(host_dir, real=True).cgroups
    finally:
        left.rmdir()
