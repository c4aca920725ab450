"""quotas and events

Revision ID: 0006
Revises: 0005
"""

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # reserved: #25 (quotas, events)


def downgrade() -> None:
    pass
