"""Networks across hosts: each network's VXLAN segment (its VNI) and where its NICs run.

Every host serving a network holds one record per NIC of that network (see
cumulo.services.dns_journal): name, address, MAC, and the underlay address of the host that
runs it. The hosts' VXLAN forwarding entries (a MAC -> that host; the flood list: every host
with a record but itself) are made from those records, so a change of host is a change of
records, sent as a delta through the same journal. Such a change is announced at once rather
than within the journal's coalescing period: until it arrives, the old host still receives
the instance's frames.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Collection
from typing import Any, TypeVar

from sqlalchemy import Select, bindparam, func, select
from sqlalchemy.orm import Session, aliased

from cumulo.db.tables import (
    AddressRow,
    BaremetalNodeRow,
    HostRow,
    InstanceRow,
    NetworkRow,
    ProjectRow,
)
from cumulo.domain.errors import InsufficientCapacity
from cumulo.protocol import DnsRecord
from cumulo.services.context import Services, fqdn

# VNIs are 24 bits. Those below 4096 are left to the operator (e.g. VLAN-numbered segments).
FIRST_VNI = 4096
LAST_VNI = 2**24 - 1
VNI_TRIES = 8

_VNI_USED = select(NetworkRow.id).where(NetworkRow.vni == bindparam("vni"))


def free_vni(s: Session) -> int:
    """A VNI no network holds yet, drawn at random: two networks created at once (in two
    zones, under two zone locks) would both take max + 1; the unique constraint guards the
    remaining chance of a collision."""
    for _ in range(VNI_TRIES):
        vni = FIRST_VNI + secrets.randbelow(LAST_VNI - FIRST_VNI + 1)
        if s.scalar(_VNI_USED, {"vni": vni}) is None:
            return vni
    raise InsufficientCapacity("no free VXLAN network identifier found")


# Where an instance's private address is reached: the underlay address of the host that
# runs it (a VM), else of its node's port host (a bare-metal server: services.
# baremetal_ports). Select UNDERLAY from a query on InstanceRow joined with `hosts_of`.
PORT_HOST = aliased(HostRow, name="port_hosts")
Q = TypeVar("Q", bound="Select[*tuple[Any, ...]]")
UNDERLAY = func.coalesce(HostRow.underlay_ip, PORT_HOST.underlay_ip)


def hosts_of(q: Q) -> Q:
    """`q` (on InstanceRow) with the outer joins UNDERLAY reads (equality joins: the hot
    queries keep their hash and index joins)."""
    return (q.outerjoin(HostRow, HostRow.id == InstanceRow.host_id)
            .outerjoin(BaremetalNodeRow, BaremetalNodeRow.instance_id == InstanceRow.id)
            .outerjoin(PORT_HOST, PORT_HOST.name == BaremetalNodeRow.port_host))


_RECORDS = hosts_of(select(AddressRow.network_id, AddressRow.ip, AddressRow.mac,
                           InstanceRow.name, InstanceRow.zone, ProjectRow.name, UNDERLAY)
                    .join(InstanceRow, InstanceRow.id == AddressRow.instance_id)
                    .join(ProjectRow, ProjectRow.id == InstanceRow.project_id)
                    ).order_by(AddressRow.ip)


def _read(s: Session, svc: Services, query: Select[str, str, str, str, str, str, str | None]
          ) -> dict[str, list[DnsRecord]]:
    out: dict[str, list[DnsRecord]] = defaultdict(list)
    for net_id, ip, mac, name, zone, project, underlay in s.execute(query):
        # Every field given: model_construct inspects a default factory's signature per call.
        out[net_id].append(DnsRecord.model_construct(
            hostname=name, fqdn=fqdn(svc, name, project, zone), ip=ip, mac=mac,
            underlay_ip=underlay or ""))
    return out


def records(s: Session, svc: Services, network_ids: Collection[str]
            ) -> dict[str, list[DnsRecord]]:
    """Every NIC's record on these networks, in address order."""
    return _read(s, svc, _RECORDS.where(AddressRow.network_id.in_(network_ids)))


def announce(svc: Services, instance_ids: Collection[str]) -> None:
    """These instances changed host (or their host its underlay address): send their records
    again, now, to every host serving their networks. Call after the commit."""
    if not instance_ids:
        return
    with svc.db.session() as s:
        changed = _read(s, svc, _RECORDS.where(AddressRow.instance_id.in_(instance_ids)))
    for network_id, recs in changed.items():
        svc.notifier.dns_changed(network_id, added=recs, within=0)


def announce_host(svc: Services, host_id: str) -> None:
    """The host's underlay address changed: every instance it runs is elsewhere now."""
    with svc.db.session() as s:
        ids = list(s.scalars(select(InstanceRow.id).where(InstanceRow.host_id == host_id)))
    announce(svc, ids)
