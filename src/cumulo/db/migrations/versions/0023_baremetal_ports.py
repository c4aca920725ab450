"""a bare-metal node's NIC: its MAC and the host its switch port is on

Revision ID: 0023
Revises: 0022
"""

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A node's NIC is cabled to a port of a hypervisor host's fabric (the host's agent plugs
    # it into the instance's network, as a VM's tap: services.baremetal_ports); its MAC is
    # read over Redfish at inspection. Both NULL: a node with no network (as before).
    with op.batch_alter_table("baremetal_nodes") as batch:
        batch.add_column(sa.Column("mac", sa.String(length=17), nullable=True))
        # By name, not id: an operator cables a node to a host that may register later.
        batch.add_column(sa.Column("port_host", sa.String(length=63), nullable=True))
        batch.create_index(batch.f("ix_baremetal_nodes_port_host"), ["port_host"])


def downgrade() -> None:
    with op.batch_alter_table("baremetal_nodes") as batch:
        batch.drop_index(batch.f("ix_baremetal_nodes_port_host"))
        batch.drop_column("port_host")
        batch.drop_column("mac")
