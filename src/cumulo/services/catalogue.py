"""What a user can choose from: zones (with live capacity), instance types, images."""

from __future__ import annotations

from collections import defaultdict

from cumulo.services.context import Principal, Services
from cumulo.services.host_admin import host_views
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
            baremetal=t.baremetal,
        )
        for t in svc.settings.instance_types
    ]


def list_zones(svc: Services, who: Principal) -> list[ZoneView]:
    """Every zone with its hosts; free capacity counts the hosts placement may use (up and
    enabled), under the allocation ratios."""
    del who  # every authenticated caller may see the catalogue
    with svc.db.session() as s:
        views = host_views(s, svc.settings)
    by_zone: dict[str, list[HostView]] = defaultdict(list)
    for h in views:
        by_zone[h.zone].append(h)
    out = []
    for region in svc.settings.regions:
        for zone in region.zones:
            zh = by_zone.get(zone, [])
            usable = [h for h in zh if h.state == "up"]
            out.append(
                ZoneView(
                    name=zone,
                    region=region.name,
                    hosts=zh,
                    vcpus_free=sum(h.vcpus_allocatable - h.vcpus_used for h in usable),
                    ram_mib_free=sum(h.ram_mib_allocatable - h.ram_mib_used for h in usable),
                )
            )
    return out
