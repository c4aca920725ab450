"""Bare-metal nodes, the operator's side: enroll, list, show, retry, delete (admins only).

Enrolling records the node in state `enroll` and returns at once; the conductor
(services.baremetal_conductor) then talks to its BMC. The BMC password is stored sealed
(services.sealed) for the conductor and never shown again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cumulo.db.tables import BaremetalNodeRow, InstanceRow
from cumulo.domain import baremetal as bm
from cumulo.domain.arch import Arch
from cumulo.domain.errors import Conflict, InvalidInput, NotFound
from cumulo.domain.ids import new_id
from cumulo.domain.validation import dns_label, positive
from cumulo.services.auth import require_admin
from cumulo.services.context import Principal, Services
from cumulo.services.sealed import seal

PASSWORD = "the BMC password"


class NodeView(BaseModel):
    name: str
    zone: str
    state: str
    last_error: str | None
    arch: str
    vcpus: int
    ram_mib: int
    disk_gib: int
    instance: str | None  # the instance deployed on it (its name)
    power_state: str | None  # as the BMC last reported it
    deploy_step: str | None  # in `deploying`: its step (domain.baremetal.DeployStep)
    redfish_url: str
    redfish_system: str
    bmc_username: str | None
    facts: dict[str, Any]  # what the last inspection read over Redfish
    mac: str | None  # its NIC's, read at inspection (None: not read, no network)
    port_host: str | None  # the host its NIC is cabled to (None: no network)
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Enrollment:
    name: str
    zone: str
    redfish_url: str
    system: str
    arch: str
    vcpus: int
    ram_mib: int
    disk_gib: int
    username: str | None = None
    password: str | None = None
    port_host: str | None = None  # the host whose fabric its NIC is cabled to

    def checked(self, zones: list[str]) -> Enrollment:
        """The same enrollment with every field validated and normalised (InvalidInput or
        NotFound with one line otherwise)."""
        if self.zone not in zones:
            raise NotFound(f"unknown zone {self.zone!r} (see `cumulo zone list`)",
                           code="unknown_zone")
        if (self.username is None) != (self.password is None):
            raise InvalidInput("a BMC username and password go together (--username and "
                               "--password-file)", code="invalid_bmc_credentials")
        return Enrollment(
            name=dns_label(self.name, "node name"), zone=self.zone,
            redfish_url=bm.redfish_url(self.redfish_url), system=bm.system_path(self.system),
            arch=Arch.parse(self.arch).value,
            vcpus=positive(self.vcpus, "vcpus", maximum=bm.MAX_VCPUS),
            ram_mib=positive(self.ram_mib, "ram (MiB)", maximum=bm.MAX_RAM_MIB),
            disk_gib=positive(self.disk_gib, "disk (GiB)", maximum=bm.MAX_DISK_GIB),
            username=None if self.username is None else bm.bmc_username(self.username),
            password=None if self.password is None else bm.bmc_password(self.password),
            port_host=None if self.port_host is None else dns_label(self.port_host,
                                                                    "port host"))


def enroll(svc: Services, who: Principal, e: Enrollment) -> NodeView:
    require_admin(who)
    e = e.checked(svc.settings.zone_names())
    node_id = new_id("bmn")
    sealed = None if e.password is None else seal(svc, e.password, node_id, PASSWORD)
    with svc.db.session() as s:
        if s.scalar(select(BaremetalNodeRow.id).where(BaremetalNodeRow.name == e.name)):
            raise Conflict(f"a bare-metal node named {e.name!r} exists", code="node_exists")
        twin = s.scalar(select(BaremetalNodeRow.name).where(
            BaremetalNodeRow.redfish_url == e.redfish_url,
            BaremetalNodeRow.redfish_system == e.system))
        if twin is not None:  # two nodes driving one machine would fight over its power
            raise Conflict(f"node {twin!r} is that BMC's system already", code="bmc_in_use")
        row = BaremetalNodeRow(
            id=node_id, name=e.name, zone=e.zone, state=bm.NodeState.ENROLL.value,
            arch=e.arch, vcpus=e.vcpus, ram_mib=e.ram_mib, disk_gib=e.disk_gib,
            redfish_url=e.redfish_url, redfish_system=e.system, bmc_username=e.username,
            bmc_password=sealed, facts={}, generation=0, port_host=e.port_host)
        s.add(row)
        s.flush()
        return view(s, row)


def list_nodes(svc: Services, who: Principal) -> list[NodeView]:
    require_admin(who)
    with svc.db.session() as s:
        rows = s.scalars(select(BaremetalNodeRow).order_by(BaremetalNodeRow.name))
        return [view(s, r) for r in rows]


def show(svc: Services, who: Principal, name: str) -> NodeView:
    require_admin(who)
    with svc.db.session() as s:
        return view(s, _get(s, name))


def delete(svc: Services, who: Principal, name: str) -> NodeView:
    """Mark the node `deleting`: the conductor powers it off and forgets it."""
    require_admin(who)
    with svc.db.session() as s:
        row = _get(s, name, lock=True)  # a create taking it meanwhile waits, or wins
        if bm.NodeState(row.state) in bm.UNDELETABLE or row.instance_id is not None:
            raise Conflict(f"node {name!r} is {row.state}: delete its instance first",
                           code="node_in_use")
        if row.state != bm.NodeState.DELETING:
            move(s, row, bm.NodeState.DELETING, None)
        return view(s, row)


def retry(svc: Services, who: Principal, name: str) -> NodeView:
    """Send a node in `error` back to the conductor (domain.baremetal.after_retry)."""
    require_admin(who)
    with svc.db.session() as s:
        row = _get(s, name, lock=True)
        if row.state != bm.NodeState.ERROR:
            raise Conflict(f"node {name!r} is {row.state}, not in error: nothing to retry",
                           code="node_not_in_error")
        if row.instance_id is not None:  # its deploy failed: the instance's delete cleans it
            raise Conflict(f"node {name!r} holds an instance (its deploy failed): delete the "
                           "instance, which cleans the node", code="node_in_use")
        move(s, row, bm.after_retry(row.last_error), None)
        return view(s, row)


def move(s: Session, row: BaremetalNodeRow, state: bm.NodeState, error: str | None) -> None:
    row.state, row.last_error = state.value, error
    row.generation += 1
    row.updated_at = datetime.now(UTC)


def compare_and_set(s: Session, node_id: str, generation: int, **values: Any) -> bool:
    """Write `values` to the node if it is still at `generation` (bumping it); False when
    another writer moved it first (the caller's result is then stale and dropped)."""
    done = s.execute(update(BaremetalNodeRow)
                     .where(BaremetalNodeRow.id == node_id,
                            BaremetalNodeRow.generation == generation)
                     .values(generation=generation + 1, updated_at=datetime.now(UTC),
                             **values))
    return bool(done.rowcount == 1)  # type: ignore[attr-defined]


def view(s: Session, row: BaremetalNodeRow) -> NodeView:
    instance = (None if row.instance_id is None
                else s.scalar(select(InstanceRow.name).where(InstanceRow.id == row.instance_id)))
    return NodeView(
        name=row.name, zone=row.zone, state=row.state, last_error=row.last_error,
        arch=row.arch, vcpus=row.vcpus, ram_mib=row.ram_mib, disk_gib=row.disk_gib,
        instance=instance, power_state=row.power_state, deploy_step=row.deploy_step,
        redfish_url=row.redfish_url,
        redfish_system=row.redfish_system, bmc_username=row.bmc_username,
        facts=dict(row.facts or {}), mac=row.mac, port_host=row.port_host,
        created_at=row.created_at, updated_at=row.updated_at)


def _get(s: Session, name: str, *, lock: bool = False) -> BaremetalNodeRow:
    q = select(BaremetalNodeRow).where(BaremetalNodeRow.name == name)
    row = s.scalar(q.with_for_update() if lock else q)
    if row is None:
        raise NotFound(f"no bare-metal node {name!r}", code="unknown_node")
    return row
