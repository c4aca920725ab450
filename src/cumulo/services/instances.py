"""Instance use cases: validate, authorize, write desired state, wake the host. No HTTP, no
drivers. Creation (validation, placement, the batched transaction) is in
cumulo.services.instance_create."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from cumulo.db.tables import HostRow, InstanceRow, MigrationRow
from cumulo.domain.arch import Arch
from cumulo.domain.errors import Conflict, InsufficientCapacity, InvalidInput, NotFound
from cumulo.domain.instance import (
    Action,
    DesiredPower,
    InstanceState,
    check_transition,
    desired_after,
)
from cumulo.domain.validation import tags
from cumulo.services import (
    baremetal_instances,
    baremetal_ports,
    events,
    hosts,
    lookups,
    metering,
    storage_down,
    terminated,
    volumes,
)
from cumulo.services.auth import scope_project
from cumulo.services.context import Principal, Services

# Creation lives in its own module; its names stay reachable here, where callers look for an
# instance's use cases.
from cumulo.services.instance_create import CREATE_ACTION as CREATE_ACTION
from cumulo.services.instance_create import DEFAULT_BANDWIDTH_MBPS as DEFAULT_BANDWIDTH_MBPS
from cumulo.services.instance_create import CreateCall as CreateCall
from cumulo.services.instance_create import CreateInstance as CreateInstance
from cumulo.services.instance_create import create as create
from cumulo.services.instance_create import create_many as create_many
from cumulo.services.instance_create import token_digest as token_digest
from cumulo.services.instance_views import view, views
from cumulo.services.views import InstanceView


def get(svc: Services, who: Principal, project: str | None, ref: str) -> InstanceView:
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        return view(s, svc, lookups.instance_row(s, prj, ref), prj.name, who)


def list_all(svc: Services, who: Principal, project: str | None) -> list[InstanceView]:
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        rows = s.scalars(
            select(InstanceRow)
            .where(InstanceRow.project_id == prj.id)
            .order_by(InstanceRow.created_at, InstanceRow.name)
        )
        return views(s, svc, list(rows), prj.name, who)


def act(
    svc: Services, who: Principal, project: str | None, ref: str, action: Action
) -> InstanceView:
    """start / stop / reboot / delete: check the transition, record intent, wake the agent."""
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        row = lookups.instance_row(s, prj, ref)
        moving = s.scalar(select(MigrationRow.id).where(MigrationRow.instance_id == row.id,
                                                        MigrationRow.active))
        if moving is not None:
            raise Conflict(f"instance {row.name!r} is being moved to another host by its "
                           f"provider ({moving}); try again when it is done",
                           code="migration_in_progress")
        node = baremetal_instances.node_of(s, row.id, lock=True)
        node_id = None if node is None else node.id
        if node is not None and action is not Action.DELETE:
            # The conductor applies it over Redfish (services.baremetal_power).
            baremetal_instances.require_active(row.name, node, action.value)
        new_state = check_transition(row.name, InstanceState(row.state), action)
        if action is Action.START:
            storage_down.refuse_start(s, row.id, row.name)
        row.state = new_state.value
        row.state_reason = ""
        row.desired_power = desired_after(action, DesiredPower(row.desired_power)).value
        row.generation += 1
        if action is Action.REBOOT:
            row.reboot_seq += 1
        _meter(s, svc, row)
        storage: set[str] = set()  # hosts whose volumes change
        if action is Action.DELETE:
            storage = volumes.release_for_instance(s, row.id)
            if node is not None:
                baremetal_instances.start_cleaning(s, node)
        events.add(s, [events.Event(prj.id, "instance", row.id, row.name,
                                    f"{action.value}_requested")])
        result = view(s, svc, row, prj.name, who)
        if action is Action.DELETE:
            terminated.record(s, prj.id, result)
    if row.host_id not in storage:
        svc.notifier.notify(row.host_id, [row.id])
    for host_id in storage:
        svc.notifier.notify(host_id)
    if node_id is not None and action is Action.DELETE:
        baremetal_ports.notify_port_host(svc, node_id)  # cleaning: its port is unplugged
    return result


def _meter(s: Session, svc: Services, row: InstanceRow) -> None:
    metering.instance(s, svc.settings, metering.now(svc), row.project_id, row.id, row.name,
                      row.state, row.type_name, row.vcpus, row.ram_mib, row.disk_gib)


@dataclass(frozen=True)
class ConsoleTarget:
    vm_id: str
    agent_url: str


def console_target(svc: Services, who: Principal, project: str | None, ref: str) -> ConsoleTarget:
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        row = lookups.instance_row(s, prj, ref)
        if baremetal_instances.node_of(s, row.id) is not None:
            baremetal_instances.refuse_console(row.name)
        host = s.get(HostRow, row.host_id) if row.host_id else None
        if host is None or not host.agent_url:
            raise Conflict(f"instance {row.name!r} has no host yet", code="invalid_state")
        return ConsoleTarget(vm_id=row.id, agent_url=host.agent_url)


def resize(svc: Services, who: Principal, project: str | None, ref: str,
           type_name: str) -> InstanceView:
    """Give a stopped instance another type's vCPUs, RAM and bandwidth (its disk stays: a
    type's disk size is the smallest a new instance gets). It must fit on its host."""
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        row = lookups.instance_row(s, prj, ref)
        if baremetal_instances.node_of(s, row.id) is not None:
            baremetal_instances.refuse_vm_action(row.name, "a resize")
        if baremetal_instances.type_of(svc.settings, type_name) is not None:
            raise InvalidInput(f"{type_name} is a bare-metal type: a VM is not resized to one",
                               code="not_for_baremetal")
        if (row.state != InstanceState.STOPPED.value
                or row.desired_power != DesiredPower.STOPPED.value):
            raise Conflict(f"instance {row.name!r} is {row.state}: stop it first",
                           code="instance_not_stopped")
        itype = svc.settings.instance_type(type_name)
        if itype is None:
            raise NotFound(f"unknown instance type {type_name!r}", code="unknown_type")
        if Arch(row.arch) not in itype.architectures:
            raise InvalidInput(f"type {itype.name!r} is not offered for {row.arch}",
                               code="type_arch_mismatch")
        hosts.lock_zone(s, row.zone)
        host = next((h for h in hosts.capacities(s, svc.settings, row.zone)
                     if h.host_id == row.host_id), None)
        if host is not None and (itype.vcpus - row.vcpus > host.vcpus_free
                                 or itype.ram_mib - row.ram_mib > host.ram_mib_free):
            raise InsufficientCapacity(
                f"its host cannot hold {itype.vcpus} vCPUs / {itype.ram_mib} MiB for "
                f"instance {row.name!r} (free: {host.vcpus_free} vCPUs / "
                f"{host.ram_mib_free} MiB besides what it holds)")
        row.type_name, row.vcpus, row.ram_mib = itype.name, itype.vcpus, itype.ram_mib
        row.bandwidth_mbps = itype.bandwidth_mbps
        _meter(s, svc, row)
        row.generation += 1
        return view(s, svc, row, prj.name, who)


def retag(svc: Services, who: Principal, project: str | None, ref: str,
          add: dict[str, str], remove: dict[str, str | None]) -> InstanceView:
    """Set the tags of `add`, then drop those of `remove` (a key with a value: only while
    the tag has that value)."""
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        row = lookups.instance_row(s, prj, ref)
        new = dict(row.tags or {}) | add
        for key, value in remove.items():
            if key in new and (value is None or new[key] == value):
                del new[key]
        row.tags = tags(new)
        return view(s, svc, row, prj.name, who)
