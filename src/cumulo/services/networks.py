"""Private networks and their address management (IPAM)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from sqlalchemy import bindparam, func, select
from sqlalchemy import delete as sql_delete
from sqlalchemy.orm import Session

from cumulo.db.tables import AddressCursorRow, AddressRow, InstanceRow, NetworkRow, ProjectRow
from cumulo.domain.errors import Conflict, InsufficientCapacity, InvalidInput, NotFound
from cumulo.domain.ids import new_id
from cumulo.domain.netaddr import first_free_subnet, gateway_of, host_range, parse_cidr
from cumulo.domain.netaddr import random_mac as _mac
from cumulo.domain.validation import dns_label
from cumulo.services import address_picker, events, quotas, segments
from cumulo.services.auth import scope_project
from cumulo.services.context import Principal, Services
from cumulo.services.views import NetworkView

DEFAULT_NETWORK = "default"


def _view(s: Session, row: NetworkRow, project: str) -> NetworkView:
    n = s.scalar(select(func.count()).where(AddressRow.network_id == row.id)) or 0
    return NetworkView(id=row.id, name=row.name, project=project, zone=row.zone, cidr=row.cidr,
                       gateway=row.gateway, is_default=row.is_default, instances=int(n),
                       created_at=row.created_at)


def _check_free(s: Session, net: ipaddress.IPv4Network, project_id: str) -> None:
    """Networks never overlap, across projects too: one namespace per host holds every
    network's bridge and routes, and the edge reaches instances by their private address
    (one route per address, cumulo.edge). A refusal names only the caller's own networks: another
    project's names and ranges are not the caller's to learn."""
    for row in s.scalars(select(NetworkRow)):
        if not net.overlaps(ipaddress.ip_network(row.cidr)):
            continue
        if row.project_id == project_id:
            raise Conflict(f"{net} overlaps your network {row.name!r} ({row.cidr}) in zone "
                           f"{row.zone}", code="cidr_overlap")
        raise Conflict(f"{net} is not available: it overlaps an address range in use in this "
                       "cloud; choose another range", code="cidr_overlap")


def _zone(svc: Services, zone: str | None) -> str:
    z = svc.settings.zone_or_default(zone)
    if z not in svc.settings.zone_names():
        raise NotFound(f"unknown zone {z!r}", code="unknown_zone")
    return z


@quotas.records_refusals
def create(svc: Services, who: Principal, project: str | None, name: str, cidr: str,
           zone: str | None) -> NetworkView:
    dns_label(name, "network name")
    net = parse_cidr(cidr)
    z = _zone(svc, zone)
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        if s.scalar(select(NetworkRow.id).where(NetworkRow.project_id == prj.id,
                                                NetworkRow.zone == z, NetworkRow.name == name)):
            raise Conflict(f"network {name!r} already exists in zone {z}", code="name_taken")
        quotas.check(s, svc, prj, {"networks": 1}, ("network", "", name))
        _check_free(s, net, prj.id)
        row = NetworkRow(id=new_id("net"), name=name, project_id=prj.id, zone=z, cidr=str(net),
                         gateway=gateway_of(net), is_default=False, vni=segments.free_vni(s))
        s.add(row)
        s.flush()
        events.add(s, [events.Event(prj.id, "network", row.id, row.name, "created",
                                    detail=f"{row.cidr} in zone {z}")])
        return _view(s, row, prj.name)


# Built once: every create looks its network up.
_DEFAULT = select(NetworkRow).where(NetworkRow.project_id == bindparam("project"),
                                    NetworkRow.zone == bindparam("zone"), NetworkRow.is_default)
_NAMED = select(NetworkRow).where(NetworkRow.project_id == bindparam("project"),
                                  NetworkRow.zone == bindparam("zone"),
                                  NetworkRow.name == bindparam("name"))


def ensure_default(s: Session, svc: Services, project: ProjectRow, zone: str) -> NetworkRow:
    row = s.scalar(_DEFAULT, {"project": project.id, "zone": zone})
    if row is not None:
        return row
    pool = ipaddress.ip_network(svc.settings.network.private_pool)
    assert isinstance(pool, ipaddress.IPv4Network)
    existing = [ipaddress.IPv4Network(c) for c in s.scalars(select(NetworkRow.cidr))]
    subnet = first_free_subnet(pool, svc.settings.network.default_prefix, existing)
    if subnet is None:
        raise InsufficientCapacity(f"the private address pool {pool} is exhausted")
    row = NetworkRow(id=new_id("net"), name=DEFAULT_NETWORK, project_id=project.id, zone=zone,
                     cidr=str(subnet), gateway=gateway_of(subnet), is_default=True,
                     vni=segments.free_vni(s))
    s.add(row)
    s.flush()
    return row


def ensure_defaults(svc: Services, who: Principal, project: str | None,
                    zones: list[str]) -> None:
    """The project's default network in each of `zones` (EC2 clients expect a default subnet
    per zone before anything runs there)."""
    from cumulo.services import hosts

    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        for zone in sorted(zones):  # in one order, as creates take them
            hosts.lock_zone(s, zone)
        for zone in zones:
            ensure_default(s, svc, prj, zone)


def resolve(s: Session, svc: Services, project: ProjectRow, zone: str,
            name: str | None) -> NetworkRow:
    if name is None or name == DEFAULT_NETWORK:
        return ensure_default(s, svc, project, zone)
    row = s.scalar(_NAMED, {"project": project.id, "zone": zone, "name": name})
    if row is None:
        raise NotFound(f"no network {name!r} in zone {zone}", code="unknown_network")
    return row


# Built once, as every create runs them (building a statement cost more than running it).
_TAKEN = select(AddressRow.ip).where(AddressRow.network_id == bindparam("network"),
                                     AddressRow.ip.in_(bindparam("ips", expanding=True)))
_MAC_USED = select(AddressRow.id).where(AddressRow.mac == bindparam("mac"))


def allocate_address(s: Session, network: NetworkRow, instance_id: str,
                     requested: str | None = None, mac: str | None = None) -> AddressRow:
    """Reserve `requested` or a free address (the unique constraint guards races), for a NIC
    of MAC `mac` (None: a new random one, a VM's; a bare-metal server's NIC has its own)."""
    net = ipaddress.IPv4Network(network.cidr)

    def taken_among(candidates: list[str]) -> Iterable[str]:
        return s.scalars(_TAKEN, {"network": network.id, "ips": candidates})

    if requested is not None:
        addr = ipaddress.IPv4Address(check_ip(requested))
        if addr not in net or addr in (net.network_address, net.broadcast_address):
            raise InvalidInput(f"{addr} is not a usable address of network {network.name!r} "
                               f"({network.cidr})", code="ip_outside_network")
        if str(addr) == network.gateway:
            raise InvalidInput(f"{addr} is the network's gateway", code="ip_reserved")
        if any(taken_among([str(addr)])):
            raise Conflict(f"{addr} is already used on network {network.name!r}",
                           code="ip_in_use")
        ip: str | None = str(addr)
    else:
        ip = address_picker.pick(s, network.id, *host_range(net), taken_among)
    if ip is None:
        raise InsufficientCapacity(f"network {network.name!r} ({network.cidr}) has no free "
                                   "address left")
    row = AddressRow(id=new_id("adr"), network_id=network.id, instance_id=instance_id, ip=ip,
                     mac=mac or _free_mac(s))
    s.add(row)
    return row


MAC_TRIES = 8


def _free_mac(s: Session) -> str:
    """A random MAC no NIC holds yet (the unique constraint would fail the create)."""
    for _ in range(MAC_TRIES):
        mac = _mac()
        if s.scalar(_MAC_USED, {"mac": mac}) is None:
            return mac
    raise InsufficientCapacity("no free MAC address found")  # 8 draws of 40 random bits


def list_all(svc: Services, who: Principal, project: str | None) -> list[NetworkView]:
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        rows = s.scalars(select(NetworkRow).where(NetworkRow.project_id == prj.id)
                         .order_by(NetworkRow.zone, NetworkRow.name))
        return [_view(s, r, prj.name) for r in rows]


def delete(svc: Services, who: Principal, project: str | None, name: str,
           zone: str | None) -> None:
    z = _zone(svc, zone)
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        row = s.scalar(select(NetworkRow).where(NetworkRow.project_id == prj.id,
                                                NetworkRow.zone == z, NetworkRow.name == name))
        if row is None:
            raise NotFound(f"no network {name!r} in zone {z}", code="unknown_network")
        used = s.scalar(select(func.count()).where(AddressRow.network_id == row.id)) or 0
        if used:
            raise Conflict(f"network {name!r} still has {used} instance(s)",
                           code="network_in_use")
        events.add(s, [events.Event(prj.id, "network", row.id, row.name, "deleted")])
        s.delete(row)
        s.execute(sql_delete(AddressCursorRow).where(AddressCursorRow.range_key == row.id))


def instances_on(s: Session, network_ids: list[str]) -> list[InstanceRow]:
    return list(s.scalars(select(InstanceRow).join(AddressRow,
                                                   AddressRow.instance_id == InstanceRow.id)
                          .where(AddressRow.network_id.in_(network_ids))))


def check_ip(value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise InvalidInput(f"invalid IPv4 address {value!r}", code="invalid_ip") from None
