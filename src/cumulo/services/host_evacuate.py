"""`cumulo host evacuate HOST`: restart the instances of a host that is down on other hosts of
its zone, from what survives the host: their records (id, name, private IP, MAC, public IP,
FQDN, security groups, desired power) and their volumes stored on other hosts (attached again
from the new host: services/evacuate_volumes), not their boot disks, which were on the host:
each gets a new one from its image. A volume stored on the down host stays there, detached.

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
from cumulo.services import (
    dedicated_hosts,
    evacuate_volumes,
    events,
    hosts,
    metering,
    migrations,
    segments,
)
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
    note: str  # what it lost (its boot disk, made again from its image) and its volumes
    volumes: list[str] = []  # attached again from the new host (stored on other hosts)
    volumes_left: list[str] = []  # stored on a down host: detached, it restarts without them


class EvacuationView(BaseModel):
    host: str
    moved: list[Evacuated]
    unmoved: list[Unmoved]  # what stays on the down host, and why
    note: str  # said once for all: boot disks are not recovered; volumes on the host stay


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
                with s.begin_nested():  # a move refused half-way changes nothing
                    _check(s, row)
                    done, storage = _move(s, svc, row, source)
                moved.append(done)
                moved_ids.append(row.id)
                wake |= {str(row.host_id), *storage}
            except CumuloError as e:
                unmoved.append(Unmoved(instance=row.name, instance_id=row.id,
                                       reason=e.message))
        out = EvacuationView(
            host=name, moved=moved, unmoved=unmoved,
            note=f"boot disks are not recovered: they were on host {name}; each moved "
                 "instance starts from a new boot disk made from its image, with its volumes "
                 f"stored on other hosts; volumes stored on host {name} stay there, detached")
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


def _move(s: Session, svc: Services, row: InstanceRow, source: HostCapacity
          ) -> tuple[Evacuated, set[str]]:
    """Place `row` as a create would (the down host excluded; a host storing one of its
    volumes only when no other fits) and move it there. Also the storage hosts to wake."""
    caps = hosts.capacities(s, svc.settings, row.zone)  # again: each move holds capacity
    # A host that has yet to discard a stale copy of this instance (evacuated from it before,
    # while it was down) would find that copy and run it: never chosen.
    stale = set(s.scalars(select(MigrationRow.source_host_id).where(
        MigrationRow.instance_id == row.id,
        MigrationRow.state == MigrationPhase.EVACUATED.value,
        MigrationRow.source_done.is_(False))))
    request = migrations.request_for(s, row)
    others = [c for c in caps if c.host_id != source.host_id and c.host_id not in stale]
    storing = evacuate_volumes.storing_hosts(s, row.id)
    placement = place(request, [c for c in others if c.host_id not in storing],
                      svc.settings.placement_policy)
    if placement.host is None and storing:
        placement = place(request, others, svc.settings.placement_policy)
    dest = placement.host
    if dest is None:
        besides = [f"{source.name}, which is down", *(
            f"{c.name}, which holds an older copy of it" for c in caps if c.host_id in stale)]
        raise InsufficientCapacity(f"{placement.explain()} (besides {'; '.join(besides)})",
                                   code="no_host_fits")
    vols = evacuate_volumes.move(s, row.id, row.name, dest.host_id)
    note = LOST_DISK.format(image=row.image_name) + _volumes_note(vols)
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
                     destination=dest.name, state=row.state, migration=mig.id, note=note,
                     volumes=vols.followed, volumes_left=vols.left), vols.wake


def _volumes_note(vols: evacuate_volumes.Outcome) -> str:
    """What became of its volumes, said in the note (output, record, event log)."""
    said = ""
    if vols.followed:
        said += f"; volumes {', '.join(vols.followed)} attached again"
    if vols.left:
        said += (f"; volumes {', '.join(vols.left)} left detached (their storage host is "
                 "down: attach them again once it is back)")
    return said
