"""quotas and events

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing projects get no limits of their own: the configuration's defaults apply.
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("quotas", sa.JSON(), nullable=False,
                                   server_default=sa.text("'{}'")))
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("project_id", sa.String(length=32), nullable=True),
        sa.Column("resource_type", sa.String(length=16), nullable=False),
        sa.Column("resource_id", sa.String(length=32), nullable=False),
        sa.Column("resource_name", sa.String(length=63), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_events_at"), "events", ["at"], unique=False)
    op.create_index(op.f("ix_events_project_id"), "events", ["project_id"], unique=False)
    op.create_index(op.f("ix_events_resource_id"), "events", ["resource_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_events_resource_id"), table_name="events")
    op.drop_index(op.f("ix_events_project_id"), table_name="events")
    op.drop_index(op.f("ix_events_at"), table_name="events")
    op.drop_table("events")
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("quotas")
