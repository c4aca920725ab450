"""host disk space: what each host has free, what each instance claims of it

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("disk_total_mib", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("disk_free_mib", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("disk_mib", sa.BigInteger(), nullable=False, server_default="0"))
    # Instances placed before this revision claim their image and their whole disk (what a
    # disk_allocation_ratio of 1 gives).
    op.execute(
        "UPDATE instances SET disk_mib = disk_gib * 1024 + COALESCE((SELECT"
        " images.virtual_size_bytes / 1048576 FROM images WHERE images.id = instances.image_id),"
        " 0)"
    )


def downgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("disk_mib")
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("disk_free_mib")
        batch_op.drop_column("disk_total_mib")
