"""Live migration's time limits, enforced by the API's periodic sweep (api.app): a migration
whose destination never answered, or whose copy has not switched over in time, fails like any
other failure before the switch-over (cumulo.domain.migration.overdue): the source is told to
roll back (the guest runs on there), then the destination to clean up, and the next queued
migration of a drain starts.

A migration whose destination host is down (hosts.sweep_down) fails the same way, at once, and
releases the capacity it held there (domain.migration.destination_lost): that host cleans up
when its agent is heard from again.

Every API process sweeps: the row lock (PostgreSQL) lets one of them only fail (and tell of)
a migration.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from cumulo.db.tables import HostRow, MigrationRow
from cumulo.domain import migration as rules
from cumulo.domain.migration import MigrationPhase
from cumulo.services import host_drain, hosts, migrations
from cumulo.services.context import Services

_RUNNING = [p.value for p in MigrationPhase if p not in rules.ENDED and
            p is not MigrationPhase.QUEUED]


def sweep(svc: Services, now: datetime | None = None) -> list[str]:
    """Fail the migrations past their time limit at `now` (default: the clock's now); wake
    the hosts whose part changed. The ids of those failed."""
    now = now or datetime.now(UTC)
    limits = svc.settings.migration.limits()
    failed: list[str] = []
    wake: set[str] = set()
    with svc.db.session() as s:
        ids = list(s.scalars(select(MigrationRow.id).where(
            MigrationRow.state.in_(_RUNNING), MigrationRow.switched.is_(False))))
        for mid in ids:
            row = s.scalar(select(MigrationRow).where(MigrationRow.id == mid)
                           .with_for_update(skip_locked=True))
            if row is None:
                continue  # another process has it now
            rec = migrations.load(row)
            if not rules.expire(rec, now, limits):
                continue
            migrations.store(s, row, rec)
            failed.append(row.id)
            wake |= {row.source_host_id, row.destination_host_id} - {""}
            wake |= host_drain.advance(s, svc, row.source_host_id, now)
        lost, woken = _destinations_lost(s, svc, now)
        failed += lost
        wake |= woken
    for host_id in wake:
        svc.notifier.notify(host_id, [])
    return failed


def _destinations_lost(s: Session, svc: Services, now: datetime) -> tuple[list[str], set[str]]:
    """Fail (and release) the migrations whose destination host is down, by the real clock
    as hosts.sweep_down has it (`now` only starts a drain's next migration)."""
    down = and_(MigrationRow.active, MigrationRow.destination_host_id == HostRow.id,
                or_(HostRow.state != "up", HostRow.last_seen <= hosts.seen_after()))
    changed: list[str] = []
    wake: set[str] = set()
    for mid, name in list(s.execute(select(MigrationRow.id, HostRow.name).where(down))):
        row = s.scalar(select(MigrationRow).where(MigrationRow.id == mid)
                       .with_for_update(skip_locked=True))
        if row is None:
            continue
        rec = migrations.load(row)
        reason = (f"its destination host {name} is down (no word from its agent): what it "
                  "held there is released, and cleaned up when it is heard from again")
        if not rules.destination_lost(rec, reason):
            continue
        migrations.store(s, row, rec)
        changed.append(row.id)
        wake.add(row.source_host_id)
        wake |= host_drain.advance(s, svc, row.source_host_id, now)
    return changed, wake
