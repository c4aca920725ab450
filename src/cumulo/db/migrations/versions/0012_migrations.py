"""live migrations (a record per migration)

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "migrations",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("instance_id", sa.String(32), nullable=False),
        sa.Column("instance_name", sa.String(63), nullable=False),
        sa.Column("project_id", sa.String(32), nullable=False),
        sa.Column("source_host_id", sa.String(32), nullable=False),
        sa.Column("destination_host_id", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False, server_default=""),
        sa.Column("progress", sa.JSON(), nullable=False),
        sa.Column("incoming", sa.JSON(), nullable=True),
        sa.Column("downtime_ms", sa.Integer(), nullable=True),
        sa.Column("total_s", sa.Float(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("switched", sa.Boolean(), nullable=False),
        sa.Column("source_done", sa.Boolean(), nullable=False),
        sa.Column("destination_done", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    for column in ("instance_id", "source_host_id", "destination_host_id", "active"):
        op.create_index(f"ix_migrations_{column}", "migrations", [column])


def downgrade() -> None:
    for column in ("instance_id", "source_host_id", "destination_host_id", "active"):
        op.drop_index(f"ix_migrations_{column}", table_name="migrations")
    op.drop_table("migrations")
