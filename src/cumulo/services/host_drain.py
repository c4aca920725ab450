"""`cumulo host drain HOST`: disable the host and move its instances off it: running ones
live, stopped ones cold (their disks copied), `drain_concurrency` at a time (the others wait
as `queued` migrations, started as earlier ones end: see `advance`). What cannot move is said,
with why: instances with volumes, instances in any other state (starting, stopping, ...).
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cumulo.db.tables import HostRow, InstanceRow, MigrationRow
from cumulo.domain import migration as rules
from cumulo.domain.errors import CumuloError, NotFound
from cumulo.domain.ids import new_id
from cumulo.domain.migration import MigrationPhase
from cumulo.services import dedicated_hosts, events, hosts, migration_volumes, migrations
from cumulo.services.auth import require_admin
from cumulo.services.context import Principal, Services


class Unmoved(BaseModel):
    instance: str
    instance_id: str
    reason: str


class DrainView(BaseModel):
    host: str
    migrations: list[migrations.MigrationView]  # started or queued now
    unmoved: list[Unmoved]  # what this drain cannot move, and why


def drain(svc: Services, who: Principal, name: str) -> DrainView:
    require_admin(who)
    with svc.db.session() as s:
        host = s.scalar(select(HostRow).where(HostRow.name == name))
        if host is None:
            raise NotFound(f"no host {name!r} (see `cumulo host list`)", code="unknown_host")
        hosts.lock_zone(s, host.zone)
        host.disabled, host.disabled_reason = True, "drained"
        queued: list[MigrationRow] = []
        unmoved = []
        for row in s.scalars(select(InstanceRow).where(InstanceRow.host_id == host.id)
                             .order_by(InstanceRow.created_at, InstanceRow.id)):
            try:
                migrations.check_movable(s, row)
            except CumuloError as e:
                unmoved.append(Unmoved(instance=row.name, instance_id=row.id,
                                       reason=e.message))
                continue
            mig = MigrationRow(id=new_id("mig"), instance_id=row.id, instance_name=row.name,
                               project_id=row.project_id, source_host_id=host.id,
                               destination_host_id="", state=MigrationPhase.QUEUED.value,
                               progress={})
            s.add(mig)
            queued.append(mig)
            events.add(s, [events.Event(row.project_id, "instance", row.id, row.name,
                                        "migration_started", "admin", mig.id)])
        s.flush()
        wake = advance(s, svc, host.id)
        out = DrainView(host=name, migrations=[migrations.view(s, m) for m in queued],
                        unmoved=unmoved)
    for host_id in wake:
        svc.notifier.notify(host_id, [])
    return out


def advance(s: Session, svc: Services, source_host_id: str,
            now: datetime | None = None) -> set[str]:
    """Start queued migrations off `source_host_id` while fewer than `drain_concurrency` run;
    each gets its destination now (placement as for a create, the source excluded) or fails
    with placement's reason; its time limits count from `now` (default: the clock's now).
    Returns the destinations to wake (after the commit)."""
    running = s.scalar(select(func.count()).select_from(MigrationRow).where(
        MigrationRow.source_host_id == source_host_id, MigrationRow.active,
        MigrationRow.state != MigrationPhase.QUEUED.value)) or 0
    wake: set[str] = set()
    for mig in s.scalars(select(MigrationRow).where(
            MigrationRow.source_host_id == source_host_id,
            MigrationRow.state == MigrationPhase.QUEUED.value)
            .order_by(MigrationRow.created_at, MigrationRow.id)):
        if running >= svc.settings.drain_concurrency:
            break
        rec = migrations.load(mig)
        try:
            dest, mig.cold, mig.cpu_set = _destination(s, svc, mig)
        except CumuloError as e:
            rules.fail(rec, e.message)  # a queued one ends whole: no host was told anything
            migrations.store(s, mig, rec)
            continue
        mig.destination_host_id, mig.state = dest, MigrationPhase.PREPARING.value
        migrations.mark_started(mig, now or datetime.now(UTC))
        s.flush()
        wake.add(dest)
        running += 1
    return wake


def _destination(s: Session, svc: Services, mig: MigrationRow
                 ) -> tuple[str, bool, list[int] | None]:
    """Where the queued `mig` goes now, whether it moves cold (its instance is stopped now:
    it may have been stopped or started while it waited), and its CPUs there (dedicated)."""
    row = s.get(InstanceRow, mig.instance_id)
    if row is None:
        raise NotFound("the instance is gone", code="unknown_instance")
    cold = migrations.settled_power(row)
    if cold is None:
        raise CumuloError(f"instance {row.name!r} is {row.state} now: not moved",
                          code="invalid_state")
    caps = {c.host_id: c for c in hosts.capacities(s, svc.settings, row.zone)}
    source = caps[mig.source_host_id]
    stored = migration_volumes.check(s, row, cold)  # its volumes may have changed meanwhile
    dest = migrations.pick(svc, migrations.request_for(s, row), caps, source, stored)
    if not s.scalar(select(HostRow.underlay_ip).where(HostRow.id == dest.host_id)):
        raise CumuloError(f"host {dest.name} has no underlay address", code="no_underlay")
    return dest.host_id, cold, dedicated_hosts.cpu_set_for(s, dest, row.vcpus)
