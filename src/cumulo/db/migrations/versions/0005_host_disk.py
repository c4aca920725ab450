"""host disk space

Revision ID: 0005
Revises: 0004
"""

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # reserved: #17 (host disk space, paused instances)


def downgrade() -> None:
    pass
