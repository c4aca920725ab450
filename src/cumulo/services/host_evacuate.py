"""`cumulo host evacuate HOST`: restart the instances of a host that is down on other hosts of
its zone, from what survives the host: their records (id, name, private IP, MAC, public IP,
FQDN, security groups, desired power), not their boot disks, which were on the host: each
gets a new one from its image.

Each move is a migration record of its own, `evacuated` at once (nothing is copied): it tells
the old host, whenever its agent is heard from again, to destroy its copy of the VM (the
`discard` step) before anything else, so the guest never runs on two hosts with the same
addresses. The old host is disabled: an operator returns it with `cumulo host enable`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from cumulo.db.tables import HostRow, InstanceRow, MigrationRow
from cumulo.domain import migration as rules
from cumulo.domain.errors import Conflict, CumuloError, InsufficientCapacity, NotFound
from cumulo.domain.ids import new_id
from cumulo.domain.instance import DesiredPower, InstanceState
from cumulo.domain.migration import MigrationPhase
from cumulo.domain.validation import dns_label
from cumulo.scheduler.placement import HostCapacity, place
from cumulo.services import dedicated_hosts, events, hosts, metering, migrations, segments
from cumulo.services.auth import require_admin
from cumulo.services.context import Principal, Services
from cumulo.services.host_drain import Unmoved

# Said in the command's output, the REST answer and each moved instance's event log.
LOST_DISK = "boot disk recreated from image {image}"


class Evacuated(BaseModel):
    instance: str
    instance_id: str
    project: str
    destination: str  # a host name (admins only evacuate)
    state: str  # its state now: pending (it starts there) or stopped (moved stopped)
    migration: str  # the evacuation's record (`cumulo migration show ID`)
    note: str  # what it lost: its boot disk, made again from its image


class EvacuationView(BaseModel):
    host: str
    moved: list[Evacuated]
    unmoved: list[Unmoved]  # what stays on the down host, and why
    note: str  # said once for all: boot disks are not recovered


def evacuate(svc: Services, who: Principal, name: str) -> EvacuationView:
    require_admin(who)
    dns_label(name, "host name")
    moved_ids: list[str] = []
    wake: set[str] = set()  # the destinations
    with svc.db.session() as s:
        host = s.scalar(select(HostRow).where(HostRow.name == name))
        if host is None:
            raise NotFound(f"no host {name!r} (see `cumulo host list`)", code="unknown_host")
        hosts.lock_zone(s, host.zone)
        old = host.id
        source = next(c for c in hosts.capacities(s, svc.settings, host.zone)
                      if c.host_id == host.id)
        if source.up:
            raise Conflict(f"host {name} is up: evacuate restarts the instances of a host that "
                           f"is down (move them live with `cumulo host drain {name}`)",
                           code="host_up")
        host.disabled, host.disabled_reason = True, "evacuated"
        moved: list[Evacuated] = []
        unmoved: list[Unmoved] = []
        for row in list(s.scalars(select(InstanceRow).where(InstanceRow.host_id == host.id)
                                  .order_by(InstanceRow.created_at, InstanceRow.id))):
            try:
                _check(s, row)
                moved.append(_move(s, svc, row, source))
                moved_ids.append(row.id)
                wake.add(str(row.host_id))
            except CumuloError as e:
                unmoved.append(Unmoved(instance=row.name, instance_id=row.id,
                                       reason=e.message))
        out = EvacuationView(
            host=name, moved=moved, unmoved=unmoved,
            note=f"boot disks are not recovered: they were on host {name}; each moved "
                 "instance starts from a new boot disk made from its image")
    for host_id in wake:
        svc.notifier.notify(host_id, None)
    svc.notifier.notify(old, None)  # its view loses them (answered when it is back)
    segments.announce(svc, moved_ids)  # every host serving their networks follows them
    return out


def _check(s: Session, row: InstanceRow) -> None:
    """Why `row` cannot be evacuated, if it cannot (raised)."""
    if row.desired_power == DesiredPower.DELETED.value:
        raise Conflict(f"instance {row.name!r} is being deleted: it is deleted when its host "
                       "is back", code="invalid_state")
    busy = migrations.active_migration(s, row.id)
    if busy is not None:
        raise Conflict(f"instance {row.name!r} is migrating ({busy}): not evacuated",
                       code="migration_in_progress")
    attached = migrations.attached_volume(s, row.id)
    if attached is not None:
        raise Conflict(f"instance {row.name!r} has volume {attached} attached: a volume lives "
                       "on its host's disk, so the instance stays with it until its host is "
                       "back", code="has_volumes")


def _move(s: Session, svc: Services, row: InstanceRow, source: HostCapacity) -> Evacuated:
    """Place `row` as a create would (the down host excluded) and move it there."""
    caps = hosts.capacities(s, svc.settings, row.zone)  # again: each move holds capacity
    # A host that has yet to discard a stale copy of this instance (evacuated from it before,
    # while it was down) would find that copy and run it: never chosen.
    stale = set(s.scalars(select(MigrationRow.source_host_id).where(
        MigrationRow.instance_id == row.id,
        MigrationRow.state == MigrationPhase.EVACUATED.value,
        MigrationRow.source_done.is_(False))))
    request = migrations.request_for(s, row)
    others = [c for c in caps if c.host_id != source.host_id and c.host_id not in stale]
    placement = place(request, others, svc.settings.placement_policy)
    dest = placement.host
    if dest is None:
        besides = [f"{source.name}, which is down", *(
            f"{c.name}, which holds an older copy of it" for c in caps if c.host_id in stale)]
        raise InsufficientCapacity(f"{placement.explain()} (besides {'; '.join(besides)})",
                                   code="no_host_fits")
    note = LOST_DISK.format(image=row.image_name)
    row.cpu_set = dedicated_hosts.cpu_set_for(s, dest, row.vcpus)
    row.host_id = dest.host_id
    stopped = row.desired_power == DesiredPower.STOPPED.value
    # Its new host starts it as a new instance (from a new disk), or keeps it stopped (the
    # disk is made at its next start).
    row.state = InstanceState.STOPPED.value if stopped else InstanceState.PENDING.value
    row.state_reason = f"evacuated from a down host; {note}"
    row.reboot_done_seq = row.reboot_seq  # a reboot asked of the old host is moot
    row.generation += 1  # what the old host said of it is stale
    metering.instance(s, svc.settings, metering.now(svc), row.project_id, row.id, row.name,
                      row.state, row.type_name, row.vcpus, row.ram_mib, row.disk_gib)
    mig = MigrationRow(id=new_id("mig"), instance_id=row.id, instance_name=row.name,
                       project_id=row.project_id, source_host_id=source.host_id,
                       destination_host_id=dest.host_id,
                       state=MigrationPhase.EVACUATED.value, progress={})
    s.add(mig)
    rec = rules.evacuated(f"evacuated from a down host; {note}")
    migrations.store(s, mig, rec)
    mig.finished_at = datetime.now(UTC)
    events.add(s, [events.Event(row.project_id, "instance", row.id, row.name, "evacuated",
                                "admin", f"{mig.id}: evacuated from a down host; {note}")])
    s.flush()
    shown = migrations.view(s, mig)
    return Evacuated(instance=row.name, instance_id=row.id, project=shown.project,
                     destination=dest.name, state=row.state, migration=mig.id, note=note)
