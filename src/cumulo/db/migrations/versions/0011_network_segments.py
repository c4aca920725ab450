"""network segments (VXLAN): a VNI per network, an underlay address per host

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

FIRST_VNI = 4096  # = cumulo.services.segments.FIRST_VNI when this revision was written


def upgrade() -> None:
    # (hosts.underlay_ip, the VXLAN endpoints, came with revision 0009.)
    with op.batch_alter_table("networks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("vni", sa.Integer(), nullable=True))
    # Networks made before this revision get VNIs in the order they were made.
    conn = op.get_bind()
    ids = conn.execute(sa.text("SELECT id FROM networks ORDER BY created_at, id")).scalars()
    for i, network_id in enumerate(list(ids)):
        conn.execute(sa.text("UPDATE networks SET vni = :vni WHERE id = :id"),
                     {"vni": FIRST_VNI + i, "id": network_id})
    with op.batch_alter_table("networks", schema=None) as batch_op:
        batch_op.alter_column("vni", existing_type=sa.Integer(), nullable=False)
        batch_op.create_unique_constraint("uq_network_vni", ["vni"])


def downgrade() -> None:
    with op.batch_alter_table("networks", schema=None) as batch_op:
        batch_op.drop_constraint("uq_network_vni", type_="unique")
        batch_op.drop_column("vni")
