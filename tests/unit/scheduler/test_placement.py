from __future__ import annotations

from dataclasses import replace

from cumulo.scheduler.placement import (
    HostCapacity,
    Request,
    disk_claim_mib,
    largest_possible,
    place,
)


def host(name: str, zone: str = "z1", ram_used: int = 0, up: bool = True,
         arches: tuple[str, ...] = ("x86_64",)) -> HostCapacity:
    return HostCapacity(host_id=name, name=name, zone=zone, architectures=frozenset(arches),
                        up=up, vcpus_total=8, ram_mib_total=1000, vcpus_used=0,
                        ram_mib_used=ram_used)


def req(ram: int = 100, zone: str = "z1", arch: str = "x86_64", vcpus: int = 1) -> Request:
    return Request(zone=zone, arch=arch, vcpus=vcpus, ram_mib=ram)


def test_spreads_to_the_emptiest_host() -> None:
    p = place(req(), [host("a", ram_used=500), host("b", ram_used=100)])
    assert p.host is not None and p.host.name == "b"


def test_says_why_no_host_fits() -> None:
    p = place(req(ram=600), [host("a", ram_used=500), host("b", up=False),
                             host("c", arches=("arm64",)), host("d", zone="z2")])
    assert p.host is None
    text = p.explain()
    assert "a: 500 MiB RAM free, 600 MiB needed" in text
    assert "b: host is down" in text and "c: does not run x86_64" in text
    assert "d:" not in text  # other zones are not worth mentioning


def test_vcpus_filter_and_empty_zone() -> None:
    assert place(req(vcpus=9), [host("a")]).host is None
    assert "no host is registered in zone z9" in place(req(zone="z9"), [host("a")]).explain()


def test_largest_possible() -> None:
    assert largest_possible([host("a"), host("b", zone="z2")], "x86_64", "z1") == (8, 1000)
    assert largest_possible([host("a")], "arm64", "z1") == (0, 0)


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
    assert p.explain() == ("full: 0 MiB disk free, 2048 MiB needed; "
                           "busy: 1000 MiB disk free, 2048 MiB needed")
    # A host that does not report its disk is not refused for it.
    assert place(disk_req(2048), [disk_host("old", total=None, free=None)]).host is not None
