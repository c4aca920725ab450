"""A bare-metal server's NIC on its project's network: the port host's side.

A node's NIC is cabled to a host's fabric (`node enroll --port-host`; its MAC read at
inspection). While the node is `active` with its instance, that host's long-poll answer
holds the NIC as a port without a VM (protocol.PortAssignment): its agent plugs the tap into
the instance's network like a VM's (bridge, DHCP entry by MAC, security groups) and does not
run anything for it (no VM, no capacity). Any other state (deploying, cleaning): no port, so
the tap (if the machine is up) is on no bridge. The instance's DNS record and the edge's
entry point at the port host's underlay address (segments.UNDERLAY): that is where its private
address is reached, as a VM's is at the host that runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from cumulo.db.tables import (
    AddressRow,
    BaremetalNodeRow,
    HostRow,
    ProjectRow,
)
from cumulo.domain import baremetal as bm
from cumulo.protocol import NicRef, PortAssignment
from cumulo.services import instance_nics, security_groups
from cumulo.services.context import Services
from cumulo.services.create_batch import CreateBatch

if TYPE_CHECKING:  # instance_create imports baremetal_instances, which imports this module
    from cumulo.services.instances import CreateInstance

# Built once and run on the session's connection: every long-poll answer of every host runs
# it (with 1,000 idle hosts, built anew through the ORM it was 19 % of the API's CPU).
_PORTS = (select(BaremetalNodeRow.instance_id, AddressRow.network_id, AddressRow.mac,
                 AddressRow.ip)
          .join(AddressRow, AddressRow.instance_id == BaremetalNodeRow.instance_id)
          .where(BaremetalNodeRow.state == bm.NodeState.ACTIVE.value,
                 BaremetalNodeRow.port_host == bindparam("host"))
          .order_by(BaremetalNodeRow.instance_id, AddressRow.id))


def for_host(s: Session, host_name: str) -> list[PortAssignment]:
    """The NICs of the active bare-metal servers cabled to this host."""
    nics: dict[str, list[NicRef]] = {}
    for iid, network_id, mac, ip in s.connection().execute(_PORTS, {"host": host_name}):
        nics.setdefault(str(iid), []).append(NicRef(network_id=network_id, mac=mac, ip=ip))
    if not nics:
        return []
    rules = security_groups.ingress_for(s, list(nics))
    return [PortAssignment(id=iid, nics=refs, ingress=rules[iid]) for iid, refs in nics.items()]


def port_host_id(s: Session, node: BaremetalNodeRow) -> str | None:
    """The id of the node's port host (None: no port, or the host never registered)."""
    if node.port_host is None:
        return None
    return s.scalar(select(HostRow.id).where(HostRow.name == node.port_host))


def notify_port_host(svc: Services, node_id: str) -> None:
    """The node's port changed (it became active, or is no longer): wake its port host.
    Call after the commit."""
    with svc.db.session() as s:
        node = s.get(BaremetalNodeRow, node_id)
        host = None if node is None else port_host_id(s, node)
    if host is not None:
        svc.notifier.notify(host)


@dataclass(frozen=True)
class Attached:
    network_id: str
    network: str
    private_ip: str
    public_ip: str | None
    groups: list[str]
    underlay_ip: str  # the port host's ("" until it registers)


def attach(svc: Services, batch: CreateBatch, prj: ProjectRow, req: CreateInstance, zone: str,
           instance_id: str, node: BaremetalNodeRow) -> Attached:
    """A new bm1 instance on a node with a port: its address on the network (the node's
    MAC), its security groups and its public IP, as a VM's create gives them."""
    s = batch.s
    network, groups = instance_nics.choices(svc, batch, prj, zone, req.network,
                                            req.security_groups)
    address, public_ip = instance_nics.wire(s, svc, prj, instance_id, network, groups,
                                            req.private_ip, mac=node.mac)
    host_id = port_host_id(s, node)
    return Attached(network_id=network.id, network=network.name, private_ip=address.ip,
                    public_ip=public_ip.ip, groups=sorted({g.name for g in groups}),
                    underlay_ip=(batch.underlay(host_id) if host_id else None) or "")
