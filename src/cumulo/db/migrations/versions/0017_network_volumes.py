"""volumes on storage hosts, attached over NBD

Revision ID: 0017
Revises: 0016
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("hosts", sa.Column("storage", sa.Boolean(), server_default=sa.false(),
                                     nullable=False))
    op.add_column("volumes", sa.Column("client_host_id", sa.String(length=32), nullable=True))
    op.add_column("volumes", sa.Column("export_name", sa.String(length=64), nullable=True))
    op.add_column("volumes", sa.Column("export_key", sa.String(length=64), nullable=True))
    op.add_column("volumes", sa.Column("export_port", sa.Integer(), nullable=True))


def downgrade() -> None:
    for column in ("export_port", "export_key", "export_name", "client_host_id"):
        op.drop_column("volumes", column)
    op.drop_column("hosts", "storage")
