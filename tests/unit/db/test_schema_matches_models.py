"""The Alembic revisions build exactly the schema that cumulo.db.tables describes: a column,
an index or a constraint added to one and not the other (an index for a hot query, say) is
named here, not found in production as a slow scan or a failed insert."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from cumulo.db.engine import Database
from cumulo.db.migrate import upgrade
from cumulo.db.tables import Base


def test_the_migrations_build_the_models_schema(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'schema.db'}")
    try:
        upgrade(db)
        with db.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    finally:
        db.dispose()
