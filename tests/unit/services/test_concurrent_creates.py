"""Creates racing in one zone: the zone lock lets exactly the host's capacity in, and no two
instances share an address or a MAC."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import select

from cumulo.db.tables import AddressRow, PublicIpRow
from cumulo.domain.errors import InsufficientCapacity, QuotaExceeded
from cumulo.services import hosts, instances, quotas
from cumulo.services.context import Services
from tests.conftest import ADMIN

# t1.nano: 1 vCPU, 128 MiB. The fixture's host (4 vCPUs) and a second one of 32 vCPUs and
# 4096 MiB (RAM is not overcommitted: 32 fit).
FITS = 4 + 32


def test_racing_creates_take_exactly_the_capacity_with_distinct_addresses(
        svc: Services) -> None:
    hosts.register(svc, ADMIN, name="big", zone="local-1a", architectures=["x86_64"],
                   vcpus=32, ram_mib=4096, driver="fake", accel="fake", agent_url="")

    def create(i: int) -> str:
        try:
            instances.create(svc, ADMIN, None, instances.CreateInstance(
                name=f"vm{i}", image="tiny", type="t1.nano"))
        except InsufficientCapacity as e:
            return e.code
        return "created"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(create, range(FITS + 8)))
    assert outcomes.count("created") == FITS, outcomes
    assert len(set(outcomes)) == 2  # the others: one stable "no capacity" code
    with svc.db.session() as s:
        private = list(s.execute(select(AddressRow.ip, AddressRow.mac)))
        public = list(s.scalars(select(PublicIpRow.ip)))
    assert len(private) == FITS == len({ip for ip, _ in private}) == len({m for _, m in private})
    assert len(public) == FITS == len(set(public))


def test_racing_creates_in_two_zones_stop_at_the_project_quota(svc: Services) -> None:
    """Creates of one project that hold different zones' locks, each in a transaction of its
    own (several API processes): the project's lock keeps them within its quota."""
    for name, zone in (("big-a", "local-1a"), ("big-b", "local-1b")):
        hosts.register(svc, ADMIN, name=name, zone=zone, architectures=["x86_64"], vcpus=64,
                       ram_mib=65536, driver="fake", accel="fake", agent_url="")
    quotas.set_limits(svc, ADMIN, "default", {"vcpus": "6"})

    def create(i: int) -> str:
        try:
            instances.create(svc, ADMIN, None, instances.CreateInstance(
                name=f"vm{i}", image="tiny", type="t1.nano",
                zone="local-1a" if i % 2 else "local-1b"))
        except QuotaExceeded as e:
            return e.code
        return "created"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(create, range(20)))
    assert sorted(outcomes) == ["created"] * 6 + ["quota_exceeded"] * 14, outcomes
    assert len(instances.list_all(svc, ADMIN, None)) == 6
