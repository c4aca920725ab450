"""network segments (VXLAN)

Revision ID: 0011
Revises: 0010
"""

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # reserved: #19 (VXLAN segments of networks)


def downgrade() -> None:
    pass
