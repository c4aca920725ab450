"""What users see of instances: views built in bulk from the rows, with their host's
liveness (an instance of a down host shows as unknown) and, for admins only, the host."""

from __future__ import annotations

from sqlalchemy import BindParameter, bindparam, select
from sqlalchemy.orm import Session

from cumulo.db.tables import (
    AddressRow,
    HostRow,
    InstanceGroupRow,
    InstanceRow,
    NetworkRow,
    PublicIpRow,
    SecurityGroupRow,
)
from cumulo.domain.instance import shown_state
from cumulo.services import dedicated_hosts, hosts, placement_groups
from cumulo.services.context import Principal, Services, fqdn
from cumulo.services.views import InstanceView

# Built once: every instance view runs them (a get, a list, each start/stop/delete).
_IDS: BindParameter[list[str]] = bindparam("ids", expanding=True)
_HOSTS = select(HostRow.id, HostRow.name, hosts.IS_UP).where(HostRow.id.in_(_IDS))
_ADDRESSES = (select(AddressRow.instance_id, AddressRow.ip, NetworkRow.name)
              .join(NetworkRow, NetworkRow.id == AddressRow.network_id)
              .where(AddressRow.instance_id.in_(_IDS)))
_PUBLIC_IPS = select(PublicIpRow.instance_id, PublicIpRow.ip).where(
    PublicIpRow.instance_id.in_(_IDS))
_GROUPS = (select(InstanceGroupRow.instance_id, SecurityGroupRow.name)
           .join(SecurityGroupRow, SecurityGroupRow.id == InstanceGroupRow.group_id)
           .where(InstanceGroupRow.instance_id.in_(_IDS))
           .order_by(SecurityGroupRow.name))


def views(s: Session, svc: Services, rows: list[InstanceRow], project: str,
          who: Principal) -> list[InstanceView]:
    """Views of `rows` (all of one project), with their network facts fetched in bulk."""
    ids = [r.id for r in rows]
    host_ids = list({r.host_id for r in rows if r.host_id})
    hosts_by_id = {hid: (name, bool(up)) for hid, name, up in s.execute(
        _HOSTS, {"ids": host_ids, "seen_after": hosts.seen_after()})}
    addr = {iid: (ip, n) for iid, ip, n in s.execute(_ADDRESSES, {"ids": ids})}
    pub = dict(s.execute(_PUBLIC_IPS, {"ids": ids}).all())
    groups: dict[str, list[str]] = {i: [] for i in ids}
    for iid, gname in s.execute(_GROUPS, {"ids": ids}):
        groups[iid].append(gname)
    dedicated = dedicated_hosts.ids_of_hosts(
        s, {r.host_id for r in rows if r.host_id and r.tenancy == "dedicated"})
    pgroups = placement_groups.names(s, {r.placement_group_id for r in rows
                                         if r.placement_group_id})
    out = []
    for row in rows:
        host, host_up = hosts_by_id.get(row.host_id or "", (None, None))
        out.append(view_of(svc, row, project, who, host=host, host_up=host_up,
                         network=addr[row.id][1] if row.id in addr else None,
                         private_ip=addr[row.id][0] if row.id in addr else None,
                         public_ip=pub.get(row.id), groups=groups[row.id],
                         placement_group=pgroups.get(row.placement_group_id or ""),
                         dedicated_host=dedicated.get(row.host_id or "")))
    return out


def view_of(svc: Services, row: InstanceRow, project: str, who: Principal, *, host: str | None,
          host_up: bool | None, network: str | None, private_ip: str | None,
          public_ip: str | None, groups: list[str], placement_group: str | None,
          dedicated_host: str | None = None) -> InstanceView:
    state, reason = shown_state(row.state, row.state_reason, host_up)
    return InstanceView(
        id=row.id, name=row.name, project=project, state=state,
        state_reason=reason, desired_state=row.desired_power,
        region=svc.settings.region_of(row.zone), zone=row.zone, arch=row.arch,
        type=row.type_name, vcpus=row.vcpus, ram_mib=row.ram_mib,
        bandwidth_mbps=row.bandwidth_mbps, disk_gib=row.disk_gib, image=row.image_name,
        image_id=row.image_id,
        # Which machine runs an instance is the operator's business: members see its zone.
        host=host if who.is_admin else None, placement_group=placement_group,
        tenancy=row.tenancy, dedicated_host=dedicated_host,
        network=network, private_ip=private_ip, public_ip=public_ip,
        fqdn=fqdn(svc, row.name, project, row.zone), key_names=list(row.key_names or []),
        security_groups=groups, tags=dict(row.tags or {}), created_at=row.created_at,
        updated_at=row.updated_at,
    )


def view(s: Session, svc: Services, row: InstanceRow, project: str,
         who: Principal) -> InstanceView:
    return views(s, svc, [row], project, who)[0]
