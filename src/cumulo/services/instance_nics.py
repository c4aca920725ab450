"""A new instance's NIC on its project's network, as a VM's create and a bare-metal server's
(services.baremetal_ports) both give it: the network and security groups chosen (read once
per create batch), then the address, the group memberships and the automatic public IP."""

from __future__ import annotations

from sqlalchemy.orm import Session

from cumulo.db.tables import (
    AddressRow,
    InstanceGroupRow,
    NetworkRow,
    ProjectRow,
    PublicIpRow,
    SecurityGroupRow,
)
from cumulo.services import networks, public_ips, security_groups
from cumulo.services.context import Services
from cumulo.services.create_batch import CreateBatch


def choices(svc: Services, batch: CreateBatch, prj: ProjectRow, zone: str,
            network: str | None, groups: list[str]
            ) -> tuple[NetworkRow, list[SecurityGroupRow]]:
    """The network (None: the zone's default) and security groups a create names."""
    s = batch.s
    found = batch.get(("groups", prj.id, *groups),
                      lambda: security_groups.resolve(s, prj, groups))
    net = batch.get(("network", prj.id, zone, network),
                    lambda: networks.resolve(s, svc, prj, zone, network))
    return net, found


def wire(s: Session, svc: Services, prj: ProjectRow, instance_id: str, network: NetworkRow,
         groups: list[SecurityGroupRow], private_ip: str | None, mac: str | None = None
         ) -> tuple[AddressRow, PublicIpRow]:
    """The instance's address (`mac`: the NIC's own, a bare-metal server's; None: a new one),
    its groups and its public IP. Their searches look at other instances' rows only: what
    this adds is written at the caller's next flush, not one flush per search."""
    with s.no_autoflush:
        address = networks.allocate_address(s, network, instance_id, private_ip, mac=mac)
        for g in groups:
            s.add(InstanceGroupRow(instance_id=instance_id, group_id=g.id))
        return address, public_ips.assign_auto(s, svc, prj, instance_id)
