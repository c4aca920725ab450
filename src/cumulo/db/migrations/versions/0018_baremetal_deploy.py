"""bare-metal deploys, bm1 instances and cleaning

Revision ID: 0018
Revises: 0017
"""

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A node holds at most one instance (the instance of a bm1 create; services.
    # baremetal_instances), and an instance's node is found by this column.
    op.create_index("ix_baremetal_nodes_instance_id", "baremetal_nodes", ["instance_id"],
                    unique=True)


def downgrade() -> None:
    op.drop_index("ix_baremetal_nodes_instance_id", table_name="baremetal_nodes")
