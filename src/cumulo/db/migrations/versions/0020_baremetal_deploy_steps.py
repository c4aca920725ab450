"""the bare-metal conductor's deploy steps

Revision ID: 0020
Revises: 0019
"""

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A deploy's progress, recorded on its node (services.baremetal_deploy_steps): the step
    # done last, the sha256 of its one-time token (the token itself is only in the URLs the
    # node is given), when it expires (= the deploy's deadline), and what the ramdisk reported.
    with op.batch_alter_table("baremetal_nodes") as batch:
        batch.add_column(sa.Column("deploy_step", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("deploy_token", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("deploy_deadline", sa.DateTime(timezone=True),
                                   nullable=True))
        batch.add_column(sa.Column("deploy_report", sa.String(length=500), nullable=True))
        batch.create_index("ix_baremetal_nodes_deploy_token", ["deploy_token"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("baremetal_nodes") as batch:
        batch.drop_index("ix_baremetal_nodes_deploy_token")
        for column in ("deploy_report", "deploy_deadline", "deploy_token", "deploy_step"):
            batch.drop_column(column)
