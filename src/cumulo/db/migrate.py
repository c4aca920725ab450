"""Bring a database to the newest schema with Alembic (run at API start-up)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from cumulo.db.engine import Database

_MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(db: Database) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["engine"] = db.engine
    return cfg


def upgrade(db: Database) -> None:
    command.upgrade(alembic_config(db), "head")
