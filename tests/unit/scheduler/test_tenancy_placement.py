"""Tenancy in placement: a dedicated host takes only its project's dedicated-tenancy
instances, shared tenancy never lands on a dedicated host, and the explanation names it."""

from __future__ import annotations

from dataclasses import replace

from cumulo.scheduler.placement import HostCapacity, Request, Why, place, rejection


def host(name: str, dedicated_to: str | None = None, enabled: bool = True) -> HostCapacity:
    return HostCapacity(host_id=name, name=name, zone="z1", architectures=frozenset({"x86_64"}),
                        up=True, enabled=enabled, vcpus_total=8, ram_mib_total=4096,
                        vcpus_used=0, ram_mib_used=0, dedicated_to=dedicated_to,
                        dedicated_id=None if dedicated_to is None else f"h-{name}")


def _name(h: HostCapacity | None) -> str | None:
    return None if h is None else h.name


SHARED = Request(zone="z1", arch="x86_64", vcpus=1, ram_mib=128, project="p1")
DEDICATED = replace(SHARED, tenancy="dedicated")


def test_shared_tenancy_never_lands_on_a_dedicated_host_even_of_its_own_project() -> None:
    hosts = [host("a", "p2"), host("b", "p1"), host("c", "p2", enabled=False)]
    p = place(SHARED, hosts)
    assert p.host is None
    # Dedication is the first filter: host c is refused for it, not for being disabled.
    assert p.explain() == ("no host fits: zone z1 has 3 hosts: 2 dedicated to another "
                           "project, 1 dedicated (not for shared tenancy)")
    assert _name(place(SHARED, [*hosts, host("d")]).host) == "d"


def test_dedicated_tenancy_goes_only_to_the_projects_dedicated_hosts() -> None:
    hosts = [host("a"), host("b", "p2"), host("c", "p1")]
    assert _name(place(DEDICATED, hosts).host) == "c"
    p = place(DEDICATED, hosts[:2])
    assert p.explain() == ("no host fits: zone z1 has 2 hosts: 1 dedicated to another "
                           "project, 1 not dedicated to the project")


def test_a_named_dedicated_host_is_the_only_candidate() -> None:
    hosts = [host("c", "p1"), host("d", "p1")]
    assert _name(place(replace(DEDICATED, dedicated_host="h-d"), hosts).host) == "d"
    p = place(replace(DEDICATED, dedicated_host="h-x"), hosts)
    assert p.explain() == "no host fits: zone z1 has 2 hosts: 2 are not dedicated host h-x"
    # Past the tenancy filter, the other filters still apply.
    full = replace(host("d", "p1"), vcpus_used=8)
    why = rejection(replace(DEDICATED, dedicated_host="h-d"), full)
    assert why is not None and why.why is Why.VCPUS
