"""Live migration, the hosts' side: each host's part in the migrations it takes part in (its
assignments), and its reports, which drive the record (cumulo.domain.migration's rules).

The instance changes host in the very transaction that records the destination's "done" to
its finish step: the guest runs there, and the source (paused since the switch-over) is told
to remove its copy. Every change wakes the hosts whose part it changes.
"""

from __future__ import annotations

import re

from sqlalchemy import BindParameter, ColumnElement, and_, bindparam, or_, select, update
from sqlalchemy.orm import Session

from cumulo.db.tables import AddressRow, InstanceRow, MigrationRow
from cumulo.domain import migration as rules
from cumulo.domain.ids import is_id
from cumulo.domain.migration import SIDE_STATES, SideReport, Step
from cumulo.domain.validation import MAX_INTEGER, one_line
from cumulo.protocol import MigrationAssignment, MigrationObservation
from cumulo.services import agent_views, host_drain, migration_volumes, migrations, segments
from cumulo.services.context import Services

MAX_REASON = 500
CHECKSUM = re.compile(r"sha256:[0-9a-f]{64}")  # a cold move's disk digest
_STEPS = frozenset(s.value for s in Step)


def _mine(host: BindParameter[str]) -> ColumnElement[bool]:
    return or_(and_(MigrationRow.destination_host_id == host,
                    MigrationRow.destination_done.is_(False)),
               and_(MigrationRow.source_host_id == host, MigrationRow.source_done.is_(False)))


# Built once, and asked first as one column on the session's connection: every long-poll
# answer asks, and almost every host takes part in no migration. Building the statement and
# the ORM's read of no rows were a third of an answer's CPU (docs/benchmarks.md, Findings
# of 2026-12-07).
_ANY_MINE = select(MigrationRow.id).where(_mine(bindparam("host"))).limit(1)
_MINE = (select(MigrationRow).where(_mine(bindparam("host")))
         .order_by(MigrationRow.created_at, MigrationRow.id))


def for_host(s: Session, svc: Services, host_id: str) -> list[MigrationAssignment]:
    """The host's part in each migration that still needs it."""
    if s.connection().execute(_ANY_MINE, {"host": host_id}).first() is None:
        return []
    out = []
    for row in s.scalars(_MINE, {"host": host_id}):
        rec = migrations.load(row)
        source = row.source_host_id == host_id
        step = rules.source_step(rec) if source else rules.destination_step(rec)
        if step is None:
            continue
        instance = None
        disk_bytes = 0
        # The destination's NICs are plumbed; a cold move's source finds its disk by it.
        if (not source and step in (Step.PREPARE, Step.FINISH)) or (
                source and row.cold and step is Step.MIGRATE):
            inst = s.get(InstanceRow, row.instance_id)
            if inst is None or inst.host_id is None:
                continue
            found = agent_views.assigned(s, svc, inst.host_id, {inst.id})
            if not found:
                continue
            instance, disk_bytes = found[0], inst.disk_gib << 30
            if not source:  # its CPUs there, not the source's (a dedicated host's own)
                instance = instance.model_copy(update={"cpu_set": list(row.cpu_set or [])})
        out.append(MigrationAssignment(
            id=row.id, role="source" if source else "destination", step=step.value,
            instance_id=row.instance_id, instance=instance, disk_bytes=disk_bytes,
            incoming=row.incoming, cold=row.cold,
            checksum=row.checksum if not source and step is Step.FINISH else ""))
    return out


def network_ids(s: Session, host_id: str) -> set[str]:
    """The networks of the instances arriving on this host: it serves them before the guest
    runs there (its NICs are on their bridges when the guest resumes)."""
    return set(s.scalars(select(AddressRow.network_id).join(
        MigrationRow, MigrationRow.instance_id == AddressRow.instance_id).where(
        MigrationRow.destination_host_id == host_id, MigrationRow.active,
        MigrationRow.cold.is_(False))))


def _usable(o: MigrationObservation) -> bool:
    return (is_id(o.id) and o.step in _STEPS and o.state in SIDE_STATES
            and (not o.checksum or CHECKSUM.fullmatch(o.checksum) is not None)
            and all(0 <= v <= MAX_INTEGER for v in o.progress.values())
            and (o.downtime_ms is None or 0 <= o.downtime_ms <= MAX_INTEGER))


def apply(s: Session, svc: Services, host_id: str, observed: list[MigrationObservation]
          ) -> tuple[set[str], set[str]]:
    """Apply a host's reports in the caller's transaction. Returns (hosts to wake, instances
    that changed host: their hosts' views and network records are sent again)."""
    wake: set[str] = set()
    moved: set[str] = set()
    for o in observed:
        if not _usable(o):
            continue
        row = s.get(MigrationRow, o.id)
        if row is None or host_id not in (row.source_host_id, row.destination_host_id):
            continue
        rec = migrations.load(row)
        before = (rec.state, rec.switched, rec.source_done, rec.destination_done, rec.incoming)
        rep = SideReport(step=Step(o.step), state=o.state, reason=one_line(o.reason, MAX_REASON),
                         incoming=dict(o.incoming) if o.incoming else None,
                         progress={k: int(v) for k, v in o.progress.items()
                                   if k in migrations.PROGRESS_KEYS},
                         downtime_ms=o.downtime_ms, total_s=o.total_s, checksum=o.checksum)
        arrived = False
        if host_id == row.source_host_id:
            rules.on_source(rec, rep)
        else:
            arrived = rules.on_destination(rec, rep)
        if arrived:
            # The guest runs on the destination now (and nowhere else: the source is paused
            # since the switch-over): the instance is there.
            s.execute(update(InstanceRow).where(InstanceRow.id == row.instance_id)
                      .values(host_id=row.destination_host_id, cpu_set=row.cpu_set))
            moved.add(row.instance_id)
            wake |= migration_volumes.follow(s, row.instance_id, row.destination_host_id)
        held = row.active
        # The next one's turn: this one ended, or its destination gave back what it held.
        if (migrations.store(s, row, rec) or held != rec.active) and rec.ended:
            wake |= host_drain.advance(s, svc, row.source_host_id)
        after = (rec.state, rec.switched, rec.source_done, rec.destination_done, rec.incoming)
        if after != before:
            wake |= {row.source_host_id, row.destination_host_id}
    return wake, moved


def after_commit(svc: Services, wake: set[str], moved: set[str]) -> None:
    """Wake the hosts whose part changed; an instance that moved: both hosts' views are
    rebuilt, and every host serving its networks sends its frames to the new host."""
    for host_id in wake:
        svc.notifier.notify(host_id, None if moved else [])
    segments.announce(svc, moved)
