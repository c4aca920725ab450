"""Picking a free address of a range with one small indexed query, instead of reading every
address taken (that read grew with the cloud: a fifth of a create at 2,000 instances).

Each range has a cursor in the database (`address_cursors`): the address after the last one
handed out. The search goes on from there and wraps around, so a freed address is handed out
again only after the rest of the range: a stale DNS, ARP or known_hosts entry for it is less
likely to reach a new instance (ISC dhcpd prefers the least recently used address for the same
reason). The cursor lives in the database, not in the process, so that this holds across
restarts of the API and between API processes. It is a hint only: the unique constraints
decide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from cumulo.db.tables import AddressCursorRow
from cumulo.domain.netaddr import address_int, candidate_windows

# Candidates per query: one IN list, well under every database's parameter limit.
WINDOW = 256

# Built once: every create reads and moves a cursor.
_CURSOR = select(AddressCursorRow.next_address).where(
    AddressCursorRow.range_key == bindparam("key"))


def _upsert(insert: Callable[..., Any]) -> Any:
    """Insert or move a cursor in one statement (both dialects speak ON CONFLICT)."""
    stmt = insert(AddressCursorRow).values(range_key=bindparam("key"),
                                           next_address=bindparam("value"))
    return stmt.on_conflict_do_update(index_elements=[AddressCursorRow.range_key],
                                      set_={"next_address": stmt.excluded.next_address})


# Built once per dialect: every create moves two cursors (building it cost more than running).
_SAVE = {"postgresql": _upsert(postgresql.insert), "sqlite": _upsert(sqlite.insert)}


def _save_cursor(s: Session, key: str, value: int) -> None:
    conn = s.connection()
    conn.execute(_SAVE[conn.dialect.name], {"key": key, "value": value})


def pick(s: Session, key: str, first: int, last: int,
         taken_among: Callable[[list[str]], Iterable[str]],
         skip_byte_values: tuple[int, ...] = ()) -> str | None:
    """A free address of [first, last] (`key` names the range), or None when all are taken.
    `taken_among(candidates)` returns those of the candidates already taken."""
    start = s.scalar(_CURSOR, {"key": key})
    if start is None or not first <= start <= last:
        start = first
    for window in candidate_windows(first, last, start, WINDOW, skip_byte_values):
        taken = set(taken_among(window))
        free = next((ip for ip in window if ip not in taken), None)
        if free is not None:
            _save_cursor(s, key, address_int(free) + 1)
            return free
    return None
