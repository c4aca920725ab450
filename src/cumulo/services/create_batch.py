"""What the instance creates of one transaction share (cumulo.services.instances.create_many)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar, cast

from sqlalchemy import select
from sqlalchemy.orm import Session

from cumulo.config import Settings
from cumulo.db.tables import HostRow, PlacementGroupRow, ProjectRow
from cumulo.scheduler.placement import GroupRule, HostCapacity
from cumulo.services import hosts, placement_groups, quotas
from cumulo.services.auth import scope_project
from cumulo.services.context import Principal, Services

T = TypeVar("T")
# The limits an instance counts against.
_QUOTA_KEYS = ("instances", "vcpus", "ram_mib")


class CreateBatch:
    """What the creates of one transaction share: their projects, images, key pairs, security
    groups, networks and each zone's host capacities, read once. Only the creates of the batch
    write any of these meanwhile (they hold the zone lock), and they do it through this object
    (a placement is added to the capacities read). A create that fails rolls back its
    savepoint, and with `restore` what it added here."""

    def __init__(self, s: Session, settings: Settings) -> None:
        self.s = s
        self.settings = settings
        self._memo: dict[tuple[object, ...], object] = {}
        self.own_limits: dict[str, dict[str, object]] = {}  # read under the projects' lock

    def get(self, key: tuple[object, ...], read: Callable[[], T]) -> T:
        if key not in self._memo:
            self._memo[key] = read()
        return cast(T, self._memo[key])

    def checkpoint(self) -> dict[tuple[object, ...], object]:
        return dict(self._memo)

    def restore(self, saved: dict[tuple[object, ...], object]) -> None:
        self._memo = saved

    def project(self, who: Principal, project: str | None) -> ProjectRow:
        return self.get(("project", who, project), lambda: scope_project(self.s, who, project))

    def lock_projects(self, projects: list[ProjectRow]) -> None:
        """After the zones' locks (in one order for every batch), which on SQLite are the
        write lock, taken before the projects were read: see quotas.lock."""
        self.own_limits = quotas.lock(self.s, projects, read_under_write_lock=True)

    def read_limits(self, projects: list[ProjectRow]) -> None:
        """The projects' limits as their rows say, without a lock (a check that writes
        nothing: cumulo.services.instance_check)."""
        self.own_limits = {p.id: dict(p.quotas or {}) for p in projects}

    def budget(self, svc: Services, prj: ProjectRow) -> quotas.Budget:
        return self.get(("budget", prj.id), lambda: quotas.budget(
            self.s, svc, prj, _QUOTA_KEYS, own=self.own_limits.get(prj.id, {})))

    def charged(self, budget: quotas.Budget) -> None:
        self._memo[("budget", budget.project_id)] = budget

    def underlay(self, host_id: str) -> str | None:
        return self.get(("underlay", host_id), lambda: self.s.scalar(
            select(HostRow.underlay_ip).where(HostRow.id == host_id)))

    def capacities(self, zone: str) -> list[HostCapacity]:
        return self.get(("capacities", zone),
                        lambda: hosts.capacities(self.s, self.settings, zone))

    def group_rule(self, group: PlacementGroupRow) -> GroupRule:
        return self.get(("group", group.id), lambda: placement_groups.rule(self.s, group))

    def placed(self, zone: str, host: HostCapacity, vcpus: int, ram_mib: int, disk_mib: int,
               group: PlacementGroupRow | None) -> None:
        self._memo[("capacities", zone)] = [
            replace(h, vcpus_used=h.vcpus_used + vcpus, ram_mib_used=h.ram_mib_used + ram_mib,
                    instances=h.instances + 1, disk_claimed_mib=h.disk_claimed_mib + disk_mib,
                    disk_pending_mib=h.disk_pending_mib + disk_mib)
            if h.host_id == host.host_id else h
            for h in self.capacities(zone)
        ]
        if group is not None:
            rule = self.group_rule(group)
            self._memo[("group", group.id)] = replace(rule, hosts=rule.hosts | {host.host_id})
