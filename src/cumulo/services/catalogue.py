"""What a user can choose from: zones (with live capacity), instance types, images."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import func, select

from cumulo.db.tables import HostRow, InstanceRow
from cumulo.services import hosts
from cumulo.services.context import Principal, Services
from cumulo.services.views import HostView, InstanceTypeView, ZoneView


def list_types(svc: Services) -> list[InstanceTypeView]:
    return [
        InstanceTypeView(
            name=t.name,
            vcpus=t.vcpus,
            ram_mib=t.ram_mib,
            bandwidth_mbps=t.bandwidth_mbps,
            disk_gib=t.disk_gib,
            architectures=[a.value for a in t.architectures],
        )
        for t in svc.settings.instance_types
    ]


def list_zones(svc: Services, who: Principal) -> list[ZoneView]:
    del who  # every authenticated caller may see the catalogue
    with svc.db.session() as s:
        caps = {c.host_id: c for c in hosts.capacities(s)}
        rows = {h.id: h for h in s.scalars(select(HostRow).order_by(HostRow.name))}
        counts = dict(
            s.execute(
                select(InstanceRow.host_id, func.count()).group_by(InstanceRow.host_id)
            ).all()
        )
    by_zone: dict[str, list[HostView]] = defaultdict(list)
    for hid, cap in caps.items():
        row = rows[hid]
        by_zone[cap.zone].append(
            HostView(
                name=cap.name,
                zone=cap.zone,
                state="up" if cap.up else "down",
                driver=row.driver,
                accel=row.accel,
                architectures=sorted(cap.architectures),
                vcpus=cap.vcpus_total,
                ram_mib=cap.ram_mib_total,
                vcpus_used=cap.vcpus_used,
                ram_mib_used=cap.ram_mib_used,
                disk_total_mib=cap.disk_total_mib,
                disk_free_mib=cap.disk_free_mib,
                disk_room_mib=cap.disk_room_mib,
                instances=int(counts.get(hid, 0)),
                last_seen=row.last_seen,
            )
        )
    out = []
    for region in svc.settings.regions:
        for zone in region.zones:
            zh = sorted(by_zone.get(zone, []), key=lambda h: h.name)
            up = [h for h in zh if h.state == "up"]
            out.append(
                ZoneView(
                    name=zone,
                    region=region.name,
                    hosts=zh,
                    vcpus_free=sum(h.vcpus - h.vcpus_used for h in up),
                    ram_mib_free=sum(h.ram_mib - h.ram_mib_used for h in up),
                )
            )
    return out
