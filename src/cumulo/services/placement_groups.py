"""Placement groups: a project's instances placed apart (spread: each on another host) or
together (cluster: all on one host). Placement reads them as a `GroupRule`."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.orm import Session

from cumulo.db.tables import InstanceRow, PlacementGroupRow, ProjectRow
from cumulo.domain.errors import Conflict, InvalidInput, NotFound
from cumulo.domain.ids import new_id
from cumulo.domain.validation import dns_label
from cumulo.scheduler.placement import GroupRule, Strategy
from cumulo.services.auth import scope_project
from cumulo.services.context import Principal, Services
from cumulo.services.views import PlacementGroupView

STRATEGIES = tuple(s.value for s in Strategy)


def create(svc: Services, who: Principal, project: str | None, name: str,
           strategy: str) -> PlacementGroupView:
    dns_label(name, "placement group name")
    if strategy not in STRATEGIES:
        raise InvalidInput(f"unknown strategy {strategy!r}: spread or cluster",
                           code="invalid_strategy")
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        if s.scalar(select(PlacementGroupRow.id).where(PlacementGroupRow.project_id == prj.id,
                                                       PlacementGroupRow.name == name)):
            raise Conflict(f"placement group {name!r} already exists in project {prj.name!r}",
                           code="name_taken")
        row = PlacementGroupRow(id=new_id("pg"), name=name, project_id=prj.id,
                                strategy=strategy)
        s.add(row)
        s.flush()
        return _views(s, [row], prj.name)[0]


def list_all(svc: Services, who: Principal, project: str | None) -> list[PlacementGroupView]:
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        rows = list(s.scalars(select(PlacementGroupRow)
                              .where(PlacementGroupRow.project_id == prj.id)
                              .order_by(PlacementGroupRow.name)))
        return _views(s, rows, prj.name)


def delete(svc: Services, who: Principal, project: str | None, name: str) -> None:
    """Only an empty group goes (its instances' placement would otherwise mean nothing)."""
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        row = find(s, prj, name)
        members = _views(s, [row], prj.name)[0].instances
        if members:
            raise Conflict(f"placement group {name!r} still holds instances: "
                           f"{', '.join(members[:5])}{', ...' if len(members) > 5 else ''}",
                           code="placement_group_in_use")
        s.delete(row)


def find(s: Session, prj: ProjectRow, name: str) -> PlacementGroupRow:
    row = s.scalar(select(PlacementGroupRow).where(PlacementGroupRow.project_id == prj.id,
                                                   PlacementGroupRow.name == name))
    if row is None:
        raise NotFound(f"no placement group {name!r} (see `cumulo placement-group list`)",
                       code="unknown_placement_group")
    return row


def rule(s: Session, group: PlacementGroupRow) -> GroupRule:
    """The group as placement sees it: its strategy and the hosts of its instances."""
    host_ids = s.scalars(select(InstanceRow.host_id).distinct()
                         .where(InstanceRow.placement_group_id == group.id,
                                InstanceRow.host_id.is_not(None)))
    return GroupRule(name=group.name, strategy=Strategy(group.strategy),
                     hosts=frozenset(h for h in host_ids if h))


def names(s: Session, ids: set[str]) -> dict[str, str]:
    """Group id -> name, for instance views."""
    if not ids:
        return {}
    return dict(s.execute(select(PlacementGroupRow.id, PlacementGroupRow.name)
                          .where(PlacementGroupRow.id.in_(ids))).all())


def _views(s: Session, rows: list[PlacementGroupRow], project: str) -> list[PlacementGroupView]:
    members: dict[str | None, list[str]] = defaultdict(list)
    for gid, iname in s.execute(select(InstanceRow.placement_group_id, InstanceRow.name)
                                .where(InstanceRow.placement_group_id.in_([r.id for r in rows]))
                                .order_by(InstanceRow.name)):
        members[gid].append(iname)
    return [PlacementGroupView(id=r.id, name=r.name, project=project, strategy=r.strategy,
                               instances=members[r.id], created_at=r.created_at)
            for r in rows]
