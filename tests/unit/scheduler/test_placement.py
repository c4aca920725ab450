from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from cumulo.scheduler.placement import (
    GroupRule,
    HostCapacity,
    Request,
    Strategy,
    Why,
    allocatable,
    disk_claim_mib,
    largest_possible,
    place,
)


def host(name: str, zone: str = "z1", ram_used: int = 0, up: bool = True,
         arches: tuple[str, ...] = ("x86_64",), enabled: bool = True, vcpus: int = 8,
         ram: int = 1000, vcpus_used: int = 0, cpu_ratio: float = 1.0,
         ram_ratio: float = 1.0) -> HostCapacity:
    return HostCapacity(host_id=name, name=name, zone=zone, architectures=frozenset(arches),
                        up=up, enabled=enabled, vcpus_total=vcpus, ram_mib_total=ram,
                        vcpus_used=vcpus_used, ram_mib_used=ram_used, cpu_ratio=cpu_ratio,
                        ram_ratio=ram_ratio)


def req(ram: int = 100, zone: str = "z1", arch: str = "x86_64", vcpus: int = 1,
        group: GroupRule | None = None) -> Request:
    return Request(zone=zone, arch=arch, vcpus=vcpus, ram_mib=ram, group=group)


def test_spread_picks_the_emptiest_host_and_pack_the_fullest() -> None:
    hosts = [host("a", ram_used=500), host("b", ram_used=100), host("c", ram_used=950)]
    assert place(req(), hosts).host.name == "b"  # type: ignore[union-attr]
    assert place(req(), hosts, "pack").host.name == "a"  # type: ignore[union-attr]
    # c is fuller still, but cannot take 100 MiB: pack takes the fullest host that fits.
    assert place(req(ram=40), hosts, "pack").host.name == "c"  # type: ignore[union-attr]


def test_equal_hosts_go_to_the_first_name() -> None:
    hosts = [host("hv-3"), host("hv-1"), host("hv-2")]
    for policy in ("spread", "pack"):
        assert place(req(), hosts, policy).host.name == "hv-1"  # type: ignore[union-attr]


def test_allocation_ratios_overcommit_what_a_host_registered() -> None:
    h = host("a", vcpus=2, ram=1000, cpu_ratio=4.0, ram_ratio=1.5)
    assert (h.vcpus_allocatable, h.ram_mib_allocatable) == (8, 1500)
    assert place(req(vcpus=8, ram=1500), [h]).host is not None
    assert place(req(vcpus=9), [h]).explain() == (
        "no host fits: zone z1 has 1 host: 1 lacks 9 vCPUs (largest free: 8)")
    assert place(req(ram=1501), [h]).host is None
    assert allocatable(100, 0.29) == 29  # not 28 (100 * 0.29 is 28.999999999999996)
    assert largest_possible([h], "x86_64", "z1") == (8, 1500)


def test_the_issue_s_example_counts_hosts_per_reason() -> None:
    zone = "local-1a"
    hosts = [host("a", zone, ram=4096, ram_used=3072), host("b", zone, ram=2048, ram_used=2048),
             host("c", zone, ram=8192, enabled=False), host("elsewhere", "z2", ram=8192)]
    p = place(req(zone=zone, ram=4096), hosts)
    assert p.host is None
    assert p.explain() == ("no host fits: zone local-1a has 3 hosts: 2 lack 4096 MiB RAM "
                           "(largest free: 1024), 1 disabled")


def test_every_reason_is_said_and_the_first_failed_filter_counts() -> None:
    hosts = [host("a", ram_used=500), host("b", up=False), host("c", arches=("arm64",)),
             host("d", zone="z2"), host("e", up=False, enabled=False),
             host("f", vcpus=0, ram_used=999)]
    p = place(req(ram=600), hosts)
    assert p.host is None
    assert p.explain() == ("no host fits: zone z1 has 5 hosts: 1 disabled, 1 down, "
                           "1 does not run x86_64, 1 lacks 1 vCPUs (largest free: 0), "
                           "1 lacks 600 MiB RAM (largest free: 500)")
    assert place(req(zone="z9"), hosts).explain() == "no host fits: zone z9 has no hosts"


def test_spread_group_puts_each_instance_on_another_host() -> None:
    hosts = [host("a"), host("b"), host("c", enabled=False)]
    rule = GroupRule(name="web", strategy=Strategy.SPREAD)
    first = place(req(group=rule), hosts).host
    assert first is not None and first.name == "a"
    rule = GroupRule(name="web", strategy=Strategy.SPREAD, hosts=frozenset({"a"}))
    second = place(req(group=rule), hosts).host
    assert second is not None and second.name == "b"
    rule = GroupRule(name="web", strategy=Strategy.SPREAD, hosts=frozenset({"a", "b"}))
    p = place(req(group=rule), hosts)
    assert p.host is None
    assert p.explain() == ("no host fits: zone z1 has 3 hosts: 2 already hold an instance "
                           "of spread placement group web, 1 disabled")


def test_cluster_group_keeps_its_instances_on_one_host() -> None:
    hosts = [host("a"), host("b", ram_used=900)]
    rule = GroupRule(name="db", strategy=Strategy.CLUSTER, hosts=frozenset({"b"}))
    assert place(req(ram=50, group=rule), hosts).host.name == "b"  # type: ignore[union-attr]
    p = place(req(ram=200, group=rule), hosts)  # b is full: a does not count as an option
    assert p.explain() == ("no host fits: zone z1 has 2 hosts: 1 is not the host of cluster "
                           "placement group db, 1 lacks 200 MiB RAM (largest free: 100)")
    empty = GroupRule(name="db", strategy=Strategy.CLUSTER)
    assert place(req(group=empty), hosts).host.name == "a"  # type: ignore[union-attr]


def disk_host(name: str, *, total: int | None = 10_000, free: int | None = 5_000,
              claimed: int = 0, pending: int = 0) -> HostCapacity:
    return replace(host(name), disk_total_mib=total, disk_free_mib=free,
                   disk_claimed_mib=claimed, disk_pending_mib=pending)


def disk_req(mib: int) -> Request:
    return Request(zone="z1", arch="x86_64", vcpus=1, ram_mib=100, disk_mib=mib)


def test_disk_claim_is_the_image_plus_the_thin_disks_share() -> None:
    assert disk_claim_mib(2**30, 1, 1.0) == 2048  # the tiny image (1 GiB) and a 1 GiB disk
    assert disk_claim_mib(2**30, 10, 4.0) == 1024 + 2560
    assert disk_claim_mib(1, 1, 3.0) == 1 + 342  # rounded up, never down


def test_disk_room_is_free_space_less_unwritten_claims_within_the_total() -> None:
    assert disk_host("a").disk_room_mib == 5_000
    assert disk_host("a", pending=1_500).disk_room_mib == 3_500  # placed, not yet written
    assert disk_host("a", claimed=8_000).disk_room_mib == 2_000  # thin disks grow into claims
    assert disk_host("a", free=0, pending=10).disk_room_mib == 0
    assert disk_host("a", total=None).disk_room_mib is None  # not reported


def test_a_host_without_disk_room_is_refused_and_the_reason_says_so() -> None:
    full, roomy = disk_host("full", free=0), disk_host("roomy", free=3_000)
    assert place(disk_req(2048), [full, roomy]).host == roomy
    p = place(disk_req(2048), [full, disk_host("busy", free=3_000, pending=2_000)])
    assert p.host is None
    assert p.explain() == ("no host fits: zone z1 has 2 hosts: 2 lack 2048 MiB disk "
                           "(largest free: 1000)")
    # A host that does not report its disk is not refused for it.
    assert place(disk_req(2048), [disk_host("old", total=None, free=None)]).host is not None


# --- properties -------------------------------------------------------------------------

hosts_st = st.lists(
    st.builds(
        host,
        name=st.sampled_from([f"h{i}" for i in range(40)]),
        zone=st.sampled_from(["z1", "z2"]),
        ram_used=st.integers(0, 1200),
        up=st.booleans(),
        arches=st.sampled_from([("x86_64",), ("arm64",), ("x86_64", "arm64")]),
        enabled=st.booleans(),
        vcpus=st.integers(1, 16),
        ram=st.integers(1, 1000),
        vcpus_used=st.integers(0, 40),
        cpu_ratio=st.sampled_from([1.0, 1.5, 4.0]),
        ram_ratio=st.sampled_from([0.5, 1.0, 1.2]),
    ),
    max_size=30,
    unique_by=lambda h: h.name,
)
groups_st = st.one_of(st.none(), st.builds(
    GroupRule, name=st.just("g"), strategy=st.sampled_from(list(Strategy)),
    hosts=st.frozensets(st.sampled_from([f"h{i}" for i in range(40)]), max_size=5)))


def fits(r: Request, h: HostCapacity, ram: bool = True) -> bool:
    """The filters, written again plainly: the oracle place() is checked against."""
    g = r.group
    in_group = g is None or (h.host_id not in g.hosts if g.strategy is Strategy.SPREAD
                             else not g.hosts or h.host_id in g.hosts)
    return (h.zone == r.zone and h.enabled and h.up and r.arch in h.architectures and in_group
            and h.vcpus_total * h.cpu_ratio - h.vcpus_used >= r.vcpus - 1e-6
            and (not ram or h.ram_mib_total * h.ram_ratio - h.ram_mib_used >= r.ram_mib - 1e-6))


@settings(max_examples=300, deadline=None)
@given(hosts=hosts_st, vcpus=st.integers(1, 8), ram=st.integers(1, 900),
       arch=st.sampled_from(["x86_64", "arm64"]), group=groups_st,
       policy=st.sampled_from(["spread", "pack"]))
def test_placement_picks_a_fitting_host_or_explains_every_host_of_the_zone(
        hosts: list[HostCapacity], vcpus: int, ram: int, arch: str, group: GroupRule | None,
        policy: str) -> None:
    r = req(ram=ram, vcpus=vcpus, arch=arch, group=group)
    p = place(r, hosts, policy)
    fitting = [h for h in hosts if fits(r, h)]
    zone_hosts = [h for h in hosts if h.zone == "z1"]
    if fitting:
        assert p.host in fitting
        share = [(h.ram_mib_free / h.ram_mib_allocatable if h.ram_mib_allocatable else 0.0)
                 for h in fitting]
        chosen = p.host.ram_mib_free / p.host.ram_mib_allocatable \
            if p.host.ram_mib_allocatable else 0.0
        assert chosen == (max(share) if policy == "spread" else min(share))
        return
    assert p.host is None
    text = p.explain()
    assert "\n" not in text and text.startswith("no host fits: zone z1 ")
    assert sum(n for n, _ in p.counts.values()) == len(zone_hosts)
    if not zone_hosts:
        assert text == "no host fits: zone z1 has no hosts"
    for why, (_, free) in p.counts.items():
        if why is Why.RAM:
            assert f"lack{'s' if p.counts[why][0] == 1 else ''} {ram} MiB RAM " \
                   f"(largest free: {free})" in text
            short = [h for h in zone_hosts if fits(r, h, ram=False)]
            assert free == max(max(0, h.ram_mib_free) for h in short)
