"""Several creates in one transaction (instances.create_many): each keeps its own outcome, a
failed one leaves nothing behind, and placement counts what the batch itself placed."""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import func, select

from cumulo.db.tables import (
    AddressRow,
    InstanceGroupRow,
    InstanceRow,
    NetworkRow,
    ProjectRow,
    PublicIpRow,
    SecurityGroupRow,
)
from cumulo.domain.errors import Conflict, CumuloError, InsufficientCapacity, InvalidInput, NotFound
from cumulo.services import events, hosts, instances, projects, quotas
from cumulo.services.context import Services
from cumulo.services.views import InstanceView
from tests.conftest import ADMIN


def _call(name: str, project: str | None = None, **kw: object) -> instances.CreateCall:
    req = instances.CreateInstance(name=name, image=str(kw.pop("image", "tiny")),
                                   type="t1.nano", **kw)  # type: ignore[arg-type]
    return instances.CreateCall(ADMIN, project, req)


def _count(svc: Services, row: type) -> int:
    with svc.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(row)) or 0)


def test_each_create_of_a_batch_gets_its_own_outcome_and_a_failed_one_writes_nothing(
        svc: Services) -> None:
    out = instances.create_many(svc, [
        _call("a"),
        _call("b", image="no-such-image"),
        _call("c"),
        _call("a"),  # taken by the first create of this very batch
        _call("-bad-"),  # refused before the database
        instances.CreateCall(ADMIN, None, instances.CreateInstance(
            name="huge", image="tiny", vcpus=64, ram_mib=128)),
    ])
    assert [type(o) for o in out] == [InstanceView, NotFound, InstanceView, Conflict,
                                      InvalidInput, InvalidInput]
    codes = [o.code for o in out if isinstance(o, CumuloError)]
    assert codes == ["unknown_image", "name_taken", "invalid_name", "too_large"]
    created = [o for o in out if isinstance(o, InstanceView)]
    assert [v.name for v in created] == ["a", "c"]
    assert all(v.private_ip and v.public_ip and v.host for v in created)
    # Exactly what the two creates wrote, and each of them once.
    for row in (InstanceRow, AddressRow, PublicIpRow, InstanceGroupRow):
        assert _count(svc, row) == 2, row
    shown = {v.id: v for v in instances.list_all(svc, ADMIN, None)}
    assert set(shown) == {v.id for v in created}
    assert {(v.private_ip, v.public_ip) for v in shown.values()} == {
        (v.private_ip, v.public_ip) for v in created}


def test_a_batch_places_with_what_it_placed_itself(svc: Services) -> None:
    # The fixture's host (4 vCPUs) and one as large: t1.nano (1 vCPU) spreads 4 and 4,
    # and the ninth finds no room.
    hosts.register(svc, ADMIN, name="host-b", zone="local-1a", architectures=["x86_64"],
                   vcpus=4, ram_mib=4096, driver="fake", accel="fake", agent_url="")
    out = instances.create_many(svc, [_call(f"vm{i}") for i in range(9)])
    assert [type(o) for o in out] == [InstanceView] * 8 + [InsufficientCapacity]
    assert Counter(o.host for o in out if isinstance(o, InstanceView)) == {
        "host-a": 4, "host-b": 4}
    with svc.db.session() as s:
        used = {c.name: c.vcpus_used for c in hosts.capacities(s, svc.settings, "local-1a")}
    assert used == {"host-a": 4, "host-b": 4}


def test_a_create_that_failed_after_making_its_project_defaults_leaves_them_to_the_next(
        svc: Services) -> None:
    # In a new project the first create makes the default network and security group; this
    # one fails after that (its address is outside the network), so they are rolled back
    # with it, and the next create of the batch must make them again, not use the gone ones.
    projects.create(svc, ADMIN, "fresh")
    out = instances.create_many(svc, [
        _call("first", "fresh", private_ip="192.0.2.10"),
        _call("second", "fresh"),
        _call("third", "fresh"),
    ])
    assert isinstance(out[0], InvalidInput) and out[0].code == "ip_outside_network"
    assert isinstance(out[1], InstanceView) and isinstance(out[2], InstanceView)
    assert out[1].network == out[2].network == "default"
    assert out[1].security_groups == out[2].security_groups == ["default"]
    with svc.db.session() as s:
        fresh = s.scalar(select(ProjectRow.id).where(ProjectRow.name == "fresh"))
        assert s.scalar(select(func.count()).select_from(NetworkRow)
                        .where(NetworkRow.project_id == fresh)) == 1
        assert s.scalar(select(func.count()).select_from(SecurityGroupRow)
                        .where(SecurityGroupRow.project_id == fresh)) == 1
    assert {v.name for v in instances.list_all(svc, ADMIN, "fresh")} == {"second", "third"}


def test_a_batch_of_one_is_a_create(svc: Services) -> None:
    view = instances.create(svc, ADMIN, None, instances.CreateInstance(
        name="solo", image="tiny", type="t1.nano"))
    assert instances.get(svc, ADMIN, None, "solo") == view
    with pytest.raises(Conflict) as taken:
        instances.create(svc, ADMIN, None, instances.CreateInstance(
            name="solo", image="tiny", type="t1.nano"))
    assert taken.value.code == "name_taken"


def test_a_batch_counts_its_own_creates_against_each_project_quota(svc: Services) -> None:
    projects.create(svc, ADMIN, "other")
    quotas.set_limits(svc, ADMIN, "default", {"instances": "2"})
    quotas.set_limits(svc, ADMIN, "other", {"vcpus": "1"})
    out = instances.create_many(svc, [
        _call("a"), _call("x", "other"), _call("b"), _call("y", "other"), _call("c"),
        _call("d", zone="local-1b"),
    ])
    assert [o.name if isinstance(o, InstanceView) else o.message for o in out] == [
        "a", "x", "b", "project 'other' would use 2 of 1 vCPUs",
        "project 'default' would use 3 of 2 instances",
        "project 'default' would use 3 of 2 instances",
    ]
    assert _count(svc, InstanceRow) == 3
    # The batch's refusals are in its events, its creates too (one statement for all).
    told = [(e.resource_name, e.kind) for e in events.list_events(svc, ADMIN)]
    assert told[-6:] == [("a", "created"), ("x", "created"), ("b", "created"),
                         ("y", "quota_refused"), ("c", "quota_refused"),
                         ("d", "quota_refused")]
