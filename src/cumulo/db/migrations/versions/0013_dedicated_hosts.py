"""dedicated hosts: hosts reserved for one project, instance tenancy and pinned host CPUs

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dedicated_hosts",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("project_id", sa.String(length=32), nullable=False),
        sa.Column("host_id", sa.String(length=32), nullable=False),
        sa.Column("zone", sa.String(length=63), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("allocated_host_id", sa.String(length=32), nullable=True),
        sa.Column("allocated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"]),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("allocated_host_id"),
    )
    with op.batch_alter_table("dedicated_hosts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dedicated_hosts_project_id"), ["project_id"],
                              unique=False)
        batch_op.create_index(batch_op.f("ix_dedicated_hosts_host_id"), ["host_id"],
                              unique=False)
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tenancy", sa.String(length=16), nullable=False,
                                      server_default="shared"))
        batch_op.add_column(sa.Column("cpu_set", sa.JSON(), nullable=True))
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cpus", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("cpus")
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("cpu_set")
        batch_op.drop_column("tenancy")
    with op.batch_alter_table("dedicated_hosts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dedicated_hosts_host_id"))
        batch_op.drop_index(batch_op.f("ix_dedicated_hosts_project_id"))
    op.drop_table("dedicated_hosts")
