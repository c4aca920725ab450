"""`cumulo instance events NAME`: one instance's event log (created, started, migrated with its
downtime, stopped ...). Users see where their instance runs only as its zone: host names are
left out of what they read; admins read each migration with its hosts."""

from __future__ import annotations

import re

from sqlalchemy import select

from cumulo.db.tables import HostRow, MigrationRow
from cumulo.services import events
from cumulo.services.auth import scope_project
from cumulo.services.context import Principal, Services
from cumulo.services.lookups import instance_row
from cumulo.services.views import EventView

_MIGRATION = re.compile(r"^(mig-[0-9a-f]{17})(: .*)?\Z")


def list_for(svc: Services, who: Principal, project: str | None, ref: str) -> list[EventView]:
    with svc.db.session() as s:
        row = instance_row(s, scope_project(s, who, project), ref)
        iid = row.id
        host_names = list(s.scalars(select(HostRow.name)))
        moves = {m.id: (m.source_host_id, m.destination_host_id)
                 for m in s.scalars(select(MigrationRow).where(MigrationRow.instance_id == iid))}
        ids = {h for pair in moves.values() for h in pair}
        named = dict(s.execute(select(HostRow.id, HostRow.name)
                               .where(HostRow.id.in_(ids))).all()) if ids else {}
    found = events.list_events(svc, who, project, iid)
    out = []
    for e in found:
        if e.resource_id != iid:
            continue
        detail = e.detail
        m = _MIGRATION.match(detail)
        if who.is_admin and m and m.group(1) in moves:
            src, dst = moves[m.group(1)]
            detail = (f"{m.group(1)} from {named.get(src, src)} to {named.get(dst, dst)}"
                      f"{m.group(2) or ''}")
        elif not who.is_admin:
            detail = hide_hosts(detail, host_names)
        out.append(e.model_copy(update={"detail": detail}))
    return out


def hide_hosts(text: str, host_names: list[str]) -> str:
    """`text` without the names of hosts ("host NAME" becomes "its host")."""
    for name in sorted(host_names, key=len, reverse=True):
        text = re.sub(rf"\bhost {re.escape(name)}(?![\w.-])", "its host", text)
    return text
