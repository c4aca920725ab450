from __future__ import annotations

from cumulo.scheduler.placement import HostCapacity, Request, largest_possible, place


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
