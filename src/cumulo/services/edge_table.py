"""The edge's table: every public address attached to an instance, where that instance's
private address is reached (the underlay address of its host), what its security groups
let in, and its FQDN (the edge's DNS answers it with the public address); a bare-metal
server's host is its node's port host (services.baremetal_ports). The edge
(cumulo.edge) long-polls it; the notifier wakes it at every change of what any host is
assigned (services.notifier.EDGE), which covers an address attached or moved, an instance
placed, migrated or deleted, and a rule changed."""

from __future__ import annotations

from sqlalchemy import select

from cumulo.db.tables import AddressRow, InstanceRow, ProjectRow, PublicIpRow
from cumulo.protocol import EdgeEntry
from cumulo.services import security_groups
from cumulo.services.auth import require_edge
from cumulo.services.context import Principal, Services, fqdn
from cumulo.services.segments import UNDERLAY, hosts_of

_ATTACHED = hosts_of(select(PublicIpRow.ip, InstanceRow.id, UNDERLAY, InstanceRow.name,
                            ProjectRow.name, InstanceRow.zone)
                     .join(InstanceRow, InstanceRow.id == PublicIpRow.instance_id)
                     .join(ProjectRow, ProjectRow.id == InstanceRow.project_id)
                     ).order_by(PublicIpRow.ip)


def entries(svc: Services, who: Principal) -> list[EdgeEntry]:
    require_edge(who)
    with svc.db.session() as s:
        rows = s.execute(_ATTACHED).all()
        ids = [r[1] for r in rows]
        if not ids:
            return []
        first_nic: dict[str, str] = {}
        for iid, ip in s.execute(select(AddressRow.instance_id, AddressRow.ip)
                                 .where(AddressRow.instance_id.in_(ids))
                                 .order_by(AddressRow.id)):
            first_nic.setdefault(iid, ip)
        rules = security_groups.ingress_for(s, ids)
    return [EdgeEntry(public_ip=ip, instance_id=iid, private_ip=first_nic[iid],
                      host_ip=host_ip, rules=rules[iid], fqdn=fqdn(svc, name, project, zone))
            for ip, iid, host_ip, name, project, zone in rows if iid in first_nic]
