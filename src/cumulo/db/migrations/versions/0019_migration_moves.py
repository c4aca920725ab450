"""cold moves and migration follow-ups

Revision ID: 0019
Revises: 0018
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("migrations") as batch:
        batch.add_column(sa.Column("cold", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
        batch.add_column(sa.Column("checksum", sa.String(length=80), nullable=False,
                                   server_default=""))
        batch.add_column(sa.Column("cpu_set", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("migrations") as batch:
        batch.drop_column("cpu_set")
        batch.drop_column("checksum")
        batch.drop_column("cold")
