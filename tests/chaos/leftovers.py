"""What a cloud's hosts hold that the cloud no longer has: the chaos suite's orphan check.

The API says what exists (instances and the host each is on, volumes, snapshots, networks);
each host's state dir and network namespace say what is there. `check` reads both and
names every difference:
- a QEMU process of a VM not running on that host, two QEMUs for one VM, or none for a
  running one (real hosts; a fake host's VMs live in its agent);
- a file or directory of a deleted instance (`instances/ID`: disk and seed; `run/ID`: QMP and
  serial sockets, pidfile), a volume or snapshot file nothing names (or one kept on two
  hosts, or none for one that exists), a half-made `*.tmp`;
- a VM's cgroup (`cumulo/ID.SCOPE`) for a VM the host no longer holds;
- in the host's namespace: a tap (`ct...`) or IFB (`cf...`, its tc caps) of a VM not running
  there, an nftables chain (`to_TAP` / `from_TAP`: the per-NIC rules) of such a VM, a bridge
  of a removed network; a dnsmasq (or its directory) of a removed network;
- a qemu-storage-daemon (an NBD export) of this cloud, or its directory (`nbd/VOL`: keys,
  socket, pidfile), for a volume not attached;
- in the edge's namespace: a route to a private address that no public address leads to, or
  one via a host that does not run its instance, or none for an attached public address.
The QEMU uid registry (/run/cumulo/vm-uids) is not checked: a claim whose directory is gone is
free by construction (agent/drivers/qemu_confine.py), so a left claim costs nothing.

`orphans` is the pure comparison (unit-tested with planted orphans); `read_host` and
`read_cloud` gather its two sides.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from cumulo.agent.drivers.qemu_cgroup import VmCgroups
from cumulo.agent.net import names
from tests.chaos.storm import Api

# States in which an instance's QEMU runs (one, exactly), and in which it must not run.
WITH_QEMU = frozenset({"running", "paused", "rebooting", "stopping"})
WITHOUT_QEMU = frozenset({"stopped", "error"})


@dataclass(frozen=True)
class CloudView:
    """What the API says exists."""

    instances: dict[str, tuple[str | None, str]]  # id -> (host name, state)
    volumes: dict[str, str]  # id -> state
    attached: frozenset[str]  # ids of the volumes attached to an instance
    snapshots: frozenset[str]
    networks: frozenset[str]  # ids
    # private address -> underlay address of its host, for each instance with a public
    # address: the edge's routes, exactly
    edge_routes: dict[str, str] = field(default_factory=dict)


@dataclass
class HostHoldings:
    """What one host's state dir, its namespace and the machine's processes hold of it."""

    name: str
    real: bool  # QEMU driver: its VMs are processes (the fake driver's live in its agent)
    instance_dirs: set[str] = field(default_factory=set)
    run_dirs: set[str] = field(default_factory=set)
    volume_files: set[str] = field(default_factory=set)
    snapshot_files: set[str] = field(default_factory=set)
    temp_files: set[str] = field(default_factory=set)
    cgroups: set[str] = field(default_factory=set)  # VM ids
    qemus: dict[str, list[int]] = field(default_factory=dict)  # VM id -> pids
    dnsmasq_dirs: set[str] = field(default_factory=set)  # network ids
    dnsmasqs: dict[str, int] = field(default_factory=dict)  # network id -> pid
    links: set[str] = field(default_factory=set)  # cumulo's links in the namespace
    nft_chains: set[str] = field(default_factory=set)
    storage_daemons: list[str] = field(default_factory=list)  # command lines
    nbd_dirs: set[str] = field(default_factory=set)  # volume ids


def _tap_owner(tap: str, vm_ids: set[str]) -> str | None:
    """The VM a tap (or IFB) belongs to among `vm_ids` (its name is a hash of the id)."""
    prefix = tap[2:12]
    return next((v for v in vm_ids if names.tap_name(v, 0)[2:12] == prefix), None)


def orphans(cloud: CloudView, hosts: list[HostHoldings],
            edge_routes: dict[str, str] | None = None) -> list[str]:
    """Every difference between what the hosts (and the edge's routes: private address ->
    via, None when not read) hold and what the cloud has (empty: none)."""
    out: list[str] = []
    if edge_routes is not None:
        for dst, via in sorted(edge_routes.items()):
            if dst not in cloud.edge_routes:
                out.append(f"edge: route to {dst} via {via}, to which no public address leads")
            elif cloud.edge_routes[dst] != via:
                out.append(f"edge: route to {dst} via {via}, whose instance runs behind "
                           f"{cloud.edge_routes[dst]}")
        out += [f"edge: no route to {dst} (via {via}), which a public address leads to"
                for dst, via in sorted(cloud.edge_routes.items()) if dst not in edge_routes]
    volume_homes: dict[str, list[str]] = {}
    for h in hosts:
        mine = {i for i, (host, _) in cloud.instances.items() if host == h.name}
        live = {i for i in mine if cloud.instances[i][1] in WITH_QEMU}
        moving = {i for i in mine if cloud.instances[i][1] not in WITH_QEMU | WITHOUT_QEMU}
        at = f"host {h.name}:"
        out += [f"{at} files of instance {i} (not on this host)" for i in
                sorted(h.instance_dirs - mine)]
        out += [f"{at} runtime dir of instance {i} (not on this host)" for i in
                sorted(h.run_dirs - mine)]
        out += [f"{at} cgroup of instance {i} (not on this host)" for i in
                sorted(h.cgroups - mine)]
        out += [f"{at} volume file {v} (no such volume)" for v in
                sorted(h.volume_files - set(cloud.volumes))]
        out += [f"{at} snapshot file {s} (no such snapshot)" for s in
                sorted(h.snapshot_files - cloud.snapshots)]
        out += [f"{at} half-made file {t}" for t in sorted(h.temp_files)]
        for v in h.volume_files:
            volume_homes.setdefault(v, []).append(h.name)
        if h.real:
            for vm in sorted(set(h.qemus) | live):
                n = len(h.qemus.get(vm, []))
                if vm in live and n != 1:
                    out.append(f"{at} {n} QEMU processes for running instance {vm}")
                elif vm not in live and vm not in moving and n:
                    state = cloud.instances[vm][1] if vm in mine else "not on this host"
                    out.append(f"{at} QEMU {h.qemus[vm]} of instance {vm} ({state})")
        nets = {name for n in cloud.networks for name in (names.bridge_name(n),
                                                          names.vxlan_name(n))}
        for link in sorted(h.links):
            if link.startswith(("ct", "cf")) and _tap_owner(link, live | moving) is None:
                out.append(f"{at} {'tap' if link.startswith('ct') else 'IFB'} {link} of"
                           " no instance running here")
            elif link.startswith(("cb", "cv")) and link not in nets:
                out.append(f"{at} bridge/VXLAN {link} of no network")
        for chain in sorted(h.nft_chains):
            tap = chain.removeprefix("to_").removeprefix("from_")
            if tap != chain and _tap_owner(tap, live | moving) is None:
                out.append(f"{at} nftables chain {chain} of no instance running here")
        out += [f"{at} dnsmasq files of removed network {n}" for n in
                sorted(h.dnsmasq_dirs - cloud.networks)]
        out += [f"{at} dnsmasq {pid} of removed network {n}" for n, pid in
                sorted(h.dnsmasqs.items()) if n not in cloud.networks]
        for cmd in h.storage_daemons:
            if not any(v in cmd for v in cloud.attached):
                out.append(f"{at} qemu-storage-daemon of no attached volume: {cmd[:200]}")
        out += [f"{at} NBD export directory of volume {v} (not attached)" for v in
                sorted(h.nbd_dirs - cloud.attached)]
    for v, homes in sorted(volume_homes.items()):
        if len(homes) > 1:
            out.append(f"volume {v} kept on {len(homes)} hosts: {homes}")
    for v, state in sorted(cloud.volumes.items()):
        if state in ("available", "in-use") and v not in volume_homes:
            out.append(f"volume {v} ({state}) has no file on any host")
    return out


def _ids(d: Path, suffix: str = "") -> set[str]:
    if not d.is_dir():
        return set()
    return {p.name.removesuffix(suffix) for p in d.iterdir()
            if not p.name.endswith(".tmp") and p.name.endswith(suffix)}


def _processes(marker: str) -> list[tuple[int, list[str]]]:
    """(pid, argv) of the live processes whose command line contains `marker`."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(marker in a for a in argv):
            out.append((int(proc.name), argv))
    return out


def _netns(ns: str, *cmd: str) -> str:
    r = subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True,
                       timeout=30)
    return r.stdout if r.returncode == 0 else ""


def read_host(host_dir: Path, real: bool) -> HostHoldings:
    """What `host_dir` (a host's state dir), its namespace and the machine hold of it."""
    h = HostHoldings(host_dir.name, real)
    h.instance_dirs = _ids(host_dir / "instances")
    h.run_dirs = _ids(host_dir / "run")
    h.volume_files = _ids(host_dir / "volumes", ".qcow2")
    h.snapshot_files = _ids(host_dir / "snapshots", ".qcow2")
    h.temp_files = {str(p) for d in ("volumes", "snapshots") for p in
                    (host_dir / d).glob("*.tmp")}
    groups = VmCgroups.for_runtime(host_dir / "run")
    for root in groups.roots():  # cgroup v2's, and the v1 ones on a hybrid host
        if (root / groups.parent).is_dir():
            h.cgroups |= {p.name.removesuffix(f".{groups.scope}") for p in
                          (root / groups.parent).iterdir() if p.name.endswith(f".{groups.scope}")}
    run = f"{host_dir}/run/"
    for pid, argv in _processes(run):
        exe = Path(argv[0]).name
        if exe.startswith("qemu-system"):
            pidfile = next(a for a in argv if a.startswith(run))
            vm = pidfile.removeprefix(run).split("/")[0]
            h.qemus.setdefault(vm, []).append(pid)
    dns = host_dir / "net" / "dnsmasq"
    h.dnsmasq_dirs = _ids(dns)
    for pid, argv in _processes(f"--conf-file={dns}/"):
        if Path(argv[0]).name == "dnsmasq":
            conf = next(a for a in argv if a.startswith("--conf-file="))
            h.dnsmasqs[Path(conf.removeprefix("--conf-file=")).parent.name] = pid
    h.nbd_dirs = {v for v in _ids(host_dir / "nbd") if v.startswith("vol-")}
    h.storage_daemons = [" ".join(argv) for _, argv in _processes(str(host_dir))
                         if Path(argv[0]).name == "qemu-storage-daemon"]
    ns = names.netns_name(host_dir)
    links = json.loads(_netns(ns, "ip", "-j", "link", "show") or "[]")
    h.links = {link["ifname"] for link in links
               if link["ifname"].startswith(("ct", "cf", "cb", "cv"))}
    ruleset = json.loads(_netns(ns, "nft", "-j", "list", "chains") or '{"nftables": []}')
    h.nft_chains = {item["chain"]["name"] for item in ruleset["nftables"] if "chain" in item}
    return h


def read_cloud(api: Api) -> tuple[CloudView, dict[str, bool]]:
    """What the API says exists, and each host's name -> whether its VMs are real."""
    listed = api.list("/v1/hosts")
    hosts = {h["name"]: h["driver"] != "fake" for h in listed}
    underlay = {h["name"]: h["underlay_ip"] for h in listed}
    instances = api.list("/v1/instances")
    vols = api.list("/v1/volumes")
    view = CloudView(
        instances={i["id"]: (i["host"], i["state"]) for i in instances},
        volumes={v["id"]: v["state"] for v in vols},
        attached=frozenset(v["id"] for v in vols if v["attached_to"]),
        snapshots=frozenset(s["id"] for s in api.list("/v1/snapshots")),
        networks=frozenset(n["id"] for n in api.list("/v1/networks")),
        edge_routes={i["private_ip"]: underlay[i["host"]] for i in instances
                     if i["public_ip"] and i["private_ip"] and underlay.get(i["host"])},
    )
    return view, hosts


def read_edge(state_dir: Path) -> dict[str, str] | None:
    """The edge's routes (private address -> via), None when the cloud has no edge."""
    ns = names.netns_name(state_dir / "edge")
    if ns not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                text=True).stdout:
        return None
    out = _netns(ns, "ip", "-4", "-j", "route", "show", "proto", "static")
    return {str(r["dst"]).removesuffix("/32"): str(r["gateway"])
            for r in json.loads(out or "[]") if r.get("dst") and r.get("gateway")}


def check(state_dir: Path, api: Api) -> list[str]:
    """Every orphan on the hosts and the edge of the cloud in `state_dir` (empty: none)."""
    view, hosts = read_cloud(api)
    return orphans(view, [read_host(state_dir / "hosts" / name, real)
                          for name, real in sorted(hosts.items())], read_edge(state_dir))


def assert_catches_a_planted_orphan(state_dir: Path, api: Api) -> None:
    """After a clean check: a directory of an instance that never existed, planted in each
    host's state dir, is named (the check reads this cloud's hosts, not somewhere else)."""
    planted = [d / "instances" / "i-00000000000000000" for d in (state_dir / "hosts").iterdir()]
    for p in planted:
        p.mkdir(parents=True)
    try:
        found = check(state_dir, api)
    finally:
        for p in planted:
            p.rmdir()
    assert len(found) == len(planted) and all("i-00000000000000000" in f for f in found), found
