"""address cursors, image minimum RAM

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "address_cursors",
        sa.Column("range_key", sa.String(length=100), nullable=False),
        sa.Column("next_address", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("range_key"),
    )
    # Images imported before this revision: the default of an import without --min-ram.
    op.add_column(
        "images",
        sa.Column("min_ram_mib", sa.Integer(), nullable=False, server_default="128"),
    )


def downgrade() -> None:
    op.drop_column("images", "min_ram_mib")
    op.drop_table("address_cursors")
