"""bare-metal nodes

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "baremetal_nodes",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("zone", sa.String(length=63), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("arch", sa.String(length=16), nullable=False),
        sa.Column("vcpus", sa.Integer(), nullable=False),
        sa.Column("ram_mib", sa.Integer(), nullable=False),
        sa.Column("disk_gib", sa.Integer(), nullable=False),
        sa.Column("redfish_url", sa.String(length=255), nullable=False),
        sa.Column("redfish_system", sa.String(length=160), nullable=False),
        sa.Column("bmc_username", sa.String(length=64), nullable=True),
        sa.Column("bmc_password", sa.LargeBinary(), nullable=True),
        sa.Column("power_state", sa.String(length=16), nullable=True),
        sa.Column("facts", sa.JSON(), nullable=False),
        sa.Column("instance_id", sa.String(length=32), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["instance_id"], ["instances.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_index("ix_baremetal_nodes_zone", "baremetal_nodes", ["zone"])
    op.create_index("ix_baremetal_nodes_state", "baremetal_nodes", ["state"])


def downgrade() -> None:
    op.drop_index("ix_baremetal_nodes_state", table_name="baremetal_nodes")
    op.drop_index("ix_baremetal_nodes_zone", table_name="baremetal_nodes")
    op.drop_table("baremetal_nodes")
