"""host lifecycle (disabled, underlay address, agent version) and placement groups

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "placement_groups",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("project_id", sa.String(length=32), nullable=False),
        sa.Column("strategy", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id", "name", name="uq_placement_group_name"),
    )
    with op.batch_alter_table("placement_groups", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_placement_groups_project_id"), ["project_id"],
                              unique=False)
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("disabled", sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
        batch_op.add_column(sa.Column("disabled_reason", sa.String(length=200), nullable=False,
                                      server_default=""))
        batch_op.add_column(sa.Column("underlay_ip", sa.String(length=39), nullable=True))
        batch_op.add_column(sa.Column("agent_version", sa.String(length=32), nullable=False,
                                      server_default=""))
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("placement_group_id", sa.String(length=32), nullable=True))
        batch_op.create_index(batch_op.f("ix_instances_placement_group_id"),
                              ["placement_group_id"], unique=False)
        batch_op.create_foreign_key("fk_instances_placement_group_id", "placement_groups",
                                    ["placement_group_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_constraint("fk_instances_placement_group_id", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_instances_placement_group_id"))
        batch_op.drop_column("placement_group_id")
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        for column in ("agent_version", "underlay_ip", "disabled_reason", "disabled"):
            batch_op.drop_column(column)
    with op.batch_alter_table("placement_groups", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_placement_groups_project_id"))
    op.drop_table("placement_groups")
