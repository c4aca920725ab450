"""Hosts as the operator sees and steers them: list, show, disable, enable (admins only).

A disabled host gets no new instance and keeps the ones it has (its agent runs them as
before); enabling it makes it a placement candidate again. Whether a host is up is not the
operator's to say: its agent's heartbeats decide (see hosts.HOST_DOWN_AFTER).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from cumulo.config import Settings
from cumulo.db.tables import HostRow
from cumulo.domain.errors import NotFound
from cumulo.domain.validation import short_text
from cumulo.services import hosts
from cumulo.services.auth import require_admin
from cumulo.services.context import Principal, Services
from cumulo.services.views import HostView

MAX_REASON = 200  # the column's


def host_views(s: Session, settings: Settings, zone: str | None = None) -> list[HostView]:
    """Every host (of `zone`), by name: what it registered, its state, and what placement
    counts on it."""
    caps = hosts.capacities(s, settings, zone)
    # Rows read after the capacities: on PostgreSQL each statement sees its own snapshot, so a
    # host that joined between two reads is in the second only (read first, the rows missed
    # it: a KeyError, a 500 to `cumulo zones` while an agent joined). One gone meanwhile is
    # left out.
    rows = {r.id: r for r in s.scalars(select(HostRow) if zone is None
                                       else select(HostRow).where(HostRow.zone == zone))}
    out = []
    for cap in caps:
        row = rows.get(cap.host_id)
        if row is None:
            continue
        out.append(HostView(
            name=cap.name, zone=cap.zone,
            state="disabled" if not cap.enabled else "up" if cap.up else "down",
            alive=cap.up, disabled_reason=row.disabled_reason, driver=row.driver,
            accel=row.accel, architectures=sorted(cap.architectures),
            vcpus_total=cap.vcpus_total, ram_mib_total=cap.ram_mib_total,
            vcpus_allocatable=cap.vcpus_allocatable,
            ram_mib_allocatable=cap.ram_mib_allocatable, vcpus_used=cap.vcpus_used,
            ram_mib_used=cap.ram_mib_used, instances=cap.instances,
            underlay_ip=row.underlay_ip, agent_version=row.agent_version,
            last_heartbeat_at=row.last_seen, disk_total_mib=cap.disk_total_mib,
            disk_free_mib=cap.disk_free_mib, disk_room_mib=cap.disk_room_mib))
    return sorted(out, key=lambda h: h.name)


def list_hosts(svc: Services, who: Principal) -> list[HostView]:
    require_admin(who)
    with svc.db.session() as s:
        return host_views(s, svc.settings)


def show(svc: Services, who: Principal, name: str) -> HostView:
    require_admin(who)
    with svc.db.session() as s:
        return _one(s, svc.settings, name)


def set_disabled(svc: Services, who: Principal, name: str, disabled: bool,
                 reason: str = "") -> HostView:
    """Disable (with the operator's reason) or enable `name`. Idempotent."""
    require_admin(who)
    if disabled:
        reason = short_text(reason, "reason", MAX_REASON)
    with svc.db.session() as s:
        row = _find(s, name)
        row.disabled, row.disabled_reason = disabled, reason if disabled else ""
        s.flush()
        return _one(s, svc.settings, name)


def _find(s: Session, name: str) -> HostRow:
    row = s.scalar(select(HostRow).where(HostRow.name == name))
    if row is None:
        raise NotFound(f"no host {name!r} (see `cumulo host list`)", code="unknown_host")
    return row


def _one(s: Session, settings: Settings, name: str) -> HostView:
    zone = _find(s, name).zone
    return next(h for h in host_views(s, settings, zone) if h.name == name)
