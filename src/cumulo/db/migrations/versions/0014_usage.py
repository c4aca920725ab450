"""prices and usage (metered transitions)

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_intervals",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  autoincrement=True, nullable=False),
        sa.Column("project_id", sa.String(length=32), nullable=False),
        sa.Column("resource_id", sa.String(length=32), nullable=False),
        sa.Column("resource_name", sa.String(length=63), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("basis", sa.String(length=80), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("unit_price", sa.String(length=32), nullable=False),
        sa.Column("period_hours", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_usage_intervals_project_id"), "usage_intervals", ["project_id"],
                    unique=False)
    op.create_index(op.f("ix_usage_intervals_resource_id"), "usage_intervals", ["resource_id"],
                    unique=False)
    # Resources that existed before are not back-billed (prices live in the configuration,
    # which a migration does not read): an instance's meters open at its next state change.


def downgrade() -> None:
    op.drop_index(op.f("ix_usage_intervals_resource_id"), table_name="usage_intervals")
    op.drop_index(op.f("ix_usage_intervals_project_id"), table_name="usage_intervals")
    op.drop_table("usage_intervals")
