"""EC2 access keys, client tokens, terminated instances, tags of other resources, the
device names volumes were attached as

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _project() -> sa.Column:  # type: ignore[type-arg]
    return sa.Column("project_id", sa.String(length=32),
                     sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False, index=True)


def upgrade() -> None:
    op.create_table(
        "access_keys",
        sa.Column("id", sa.String(length=20), primary_key=True),
        _project(),
        sa.Column("secret", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "client_tokens",
        _project(),
        sa.Column("token", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("project_id", "token", "action"),
    )
    op.create_table(
        "terminated_instances",
        sa.Column("id", sa.String(length=32), primary_key=True),
        _project(),
        sa.Column("view", sa.JSON(), nullable=False),
        sa.Column("terminated_at", sa.DateTime(timezone=True), nullable=False, index=True),
    )
    op.create_table(
        "resource_tags",
        sa.Column("resource_id", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        _project(),
        sa.Column("value", sa.String(length=256), nullable=False),
        sa.PrimaryKeyConstraint("resource_id", "key"),
    )
    op.create_table(
        "volume_device_names",
        sa.Column("volume_id", sa.String(length=32), primary_key=True),
        _project(),
        sa.Column("device", sa.String(length=32), nullable=False),
    )


def downgrade() -> None:
    for table in ("volume_device_names", "resource_tags", "terminated_instances",
                  "client_tokens", "access_keys"):
        op.drop_table(table)
