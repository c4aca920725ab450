"""Public IPs. In all-in-one mode they come from a loopback pool (a slice of 127.0.0.0/8)
and the edge (cumulo.edge) forwards them into the instance as its security groups allow."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from cumulo.db.tables import InstanceRow, ProjectRow, PublicIpRow
from cumulo.domain.errors import Conflict, InsufficientCapacity, NotFound
from cumulo.domain.ids import new_id
from cumulo.services import address_picker, events, lookups, metering, networks, prices, quotas
from cumulo.services.auth import scope_project
from cumulo.services.context import Principal, Services
from cumulo.services.notifier import EDGE
from cumulo.services.views import PublicIpView


def _view(s: Session, row: PublicIpRow, project: str) -> PublicIpView:
    inst = s.get(InstanceRow, row.instance_id) if row.instance_id else None
    return PublicIpView(id=row.id, ip=row.ip, project=project, instance=inst.name if inst else None,
                        auto=row.auto, created_at=row.created_at)


# Built once: every create runs it (building a statement cost more than running it).
_TAKEN = select(PublicIpRow.ip).where(PublicIpRow.ip.in_(bindparam("ips", expanding=True)))


def _allocate(s: Session, svc: Services, prj: ProjectRow, auto: bool,
              instance_id: str | None = None) -> PublicIpRow:
    pool = ipaddress.IPv4Network(svc.settings.network.public_pool)

    def taken_among(candidates: list[str]) -> Iterable[str]:
        return s.scalars(_TAKEN, {"ips": candidates})

    # .0/.255-style addresses are avoided: some tools treat them as special; the last usable
    # one is the edge's DNS (netaddr.public_dns_address)
    ip = address_picker.pick(s, f"public:{pool}", int(pool.network_address) + 1,
                             int(pool.broadcast_address) - 2, taken_among,
                             skip_byte_values=(0, 255))
    if ip is None:
        raise InsufficientCapacity(f"the public IP pool {pool} is exhausted")
    row = PublicIpRow(id=new_id("pip"), ip=ip, project_id=prj.id, auto=auto,
                      instance_id=instance_id)
    s.add(row)
    metering.start(s, metering.now(svc), prj.id, row.id, ip, [prices.public_ip_rate(svc.settings)])
    return row


def assign_auto(s: Session, svc: Services, prj: ProjectRow, instance_id: str) -> PublicIpRow:
    return _allocate(s, svc, prj, auto=True, instance_id=instance_id)


def _find(s: Session, prj: ProjectRow, ip: str) -> PublicIpRow:
    row = s.scalar(select(PublicIpRow).where(PublicIpRow.ip == networks.check_ip(ip),
                                             PublicIpRow.project_id == prj.id))
    if row is None:
        raise NotFound(f"public IP {ip} is not allocated to this project",
                       code="unknown_public_ip")
    return row


def _event(prj: ProjectRow, row: PublicIpRow, kind: str, detail: str = "") -> list[events.Event]:
    return [events.Event(prj.id, "public_ip", row.id, row.ip, kind, detail=detail)]


@quotas.records_refusals
def allocate(svc: Services, who: Principal, project: str | None) -> PublicIpView:
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        quotas.check(s, svc, prj, {"public_ips": 1}, ("public_ip", "", ""))
        row = _allocate(s, svc, prj, auto=False)
        s.flush()  # its creation time
        events.add(s, _event(prj, row, "allocated"))
        return _view(s, row, prj.name)


def list_all(svc: Services, who: Principal, project: str | None) -> list[PublicIpView]:
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        rows = s.scalars(select(PublicIpRow).where(PublicIpRow.project_id == prj.id)
                         .order_by(PublicIpRow.created_at))
        return [_view(s, r, prj.name) for r in rows]


def attach(svc: Services, who: Principal, project: str | None, ip: str,
           instance_ref: str, reassociate: bool = False) -> PublicIpView:
    """Attach to an instance, replacing the public IP it was given at create (released, as
    EC2 does with an auto-assigned address). An address attached to another instance, or an
    instance holding an allocated address, is refused unless `reassociate` (EC2's
    AllowReassociation): then the address moves, and the instance's allocated address is
    detached and stays allocated. No instance loses an address without being asked for."""
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        row = _find(s, prj, ip)
        inst = lookups.instance_row(s, prj, instance_ref)
        notify = {inst.host_id}
        if row.instance_id == inst.id:
            return _view(s, row, prj.name)
        current = s.scalar(select(PublicIpRow).where(PublicIpRow.instance_id == inst.id))
        if not reassociate:
            _refuse_taking(s, row, inst, current)
        if row.instance_id is not None:
            old = s.get(InstanceRow, row.instance_id)
            notify.add(old.host_id if old else None)
        if current is not None:
            if current.auto:
                metering.end(s, metering.now(svc), [current.id])
                s.delete(current)
            else:
                current.instance_id = None
            s.flush()
        row.instance_id = inst.id
        row.auto = False
        s.flush()
        events.add(s, _event(prj, row, "attached", f"to instance {inst.name}"))
        result = _view(s, row, prj.name)
    for h in notify:
        _wake(svc, h)
    return result


def _wake(svc: Services, host_id: str | None) -> None:
    """The host of an instance whose public address changed, and so the edge; a bare-metal
    server has no host (its port host has no use for the address): the edge alone."""
    svc.notifier.notify(EDGE if host_id is None else host_id)


def _refuse_taking(s: Session, row: PublicIpRow, inst: InstanceRow,
                   current: PublicIpRow | None) -> None:
    """Conflict if attaching `row` to `inst` would take an address from anyone. Both are the
    caller's project's (`_find` and `lookups.instance_row` look in it only), so naming them
    leaks nothing."""
    if row.instance_id is not None:
        holder = s.get(InstanceRow, row.instance_id)
        raise Conflict(f"public IP {row.ip} is attached to instance "
                       f"{holder.name if holder else row.instance_id!r}; detach it first or "
                       "pass --reassociate to move it", code="ip_in_use")
    if current is not None and not current.auto:
        raise Conflict(f"instance {inst.name!r} already has public IP {current.ip}; detach it "
                       "first or pass --reassociate to replace it", code="ip_in_use")


def detach(svc: Services, who: Principal, project: str | None, ip: str) -> PublicIpView:
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        row = _find(s, prj, ip)
        if row.instance_id is None:
            raise Conflict(f"public IP {ip} is not attached", code="not_attached")
        inst = s.get(InstanceRow, row.instance_id)
        row.instance_id = None
        row.auto = False
        events.add(s, _event(prj, row, "detached", f"from instance {inst.name}" if inst else ""))
        result = _view(s, row, prj.name)
    _wake(svc, inst.host_id if inst else None)
    return result


def release(svc: Services, who: Principal, project: str | None, ip: str) -> None:
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        row = _find(s, prj, ip)
        if row.instance_id is not None:
            raise Conflict(f"public IP {ip} is attached; detach it first", code="attached")
        events.add(s, _event(prj, row, "released"))
        metering.end(s, metering.now(svc), [row.id])
        s.delete(row)
