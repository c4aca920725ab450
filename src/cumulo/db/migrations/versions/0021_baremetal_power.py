"""bare-metal power actions of a node's instance

Revision ID: 0021
Revises: 0020
"""

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The power action a conductor is applying to an active node's machine (stop, start,
    # reboot: services.baremetal_power), recorded before its Redfish calls: with the node's
    # updated_at it is a lease, so two API processes never apply one request twice.
    with op.batch_alter_table("baremetal_nodes") as batch:
        batch.add_column(sa.Column("power_action", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("baremetal_nodes") as batch:
        batch.drop_column("power_action")
