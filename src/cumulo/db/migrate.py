"""Bring a database to the newest schema with Alembic (run at API start-up)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from cumulo.db.engine import Database

_MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(db: Database) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["engine"] = db.engine
    return cfg


# PostgreSQL advisory lock keys: several API processes may start at once on one database.
_MIGRATION_LOCK = (0x63756D, 1)


def upgrade(db: Database) -> None:
    """Migrate to the newest schema; on PostgreSQL one process at a time."""
    if db.in_process:
        command.upgrade(alembic_config(db), "head")
        return
    with db.engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:a, :b)"),
                     {"a": _MIGRATION_LOCK[0], "b": _MIGRATION_LOCK[1]})
        try:
            command.upgrade(alembic_config(db), "head")
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:a, :b)"),
                         {"a": _MIGRATION_LOCK[0], "b": _MIGRATION_LOCK[1]})
            conn.commit()
