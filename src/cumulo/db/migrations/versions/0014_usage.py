"""prices and usage (metered transitions)

Revision ID: 0014
Revises: 0013
"""

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # reserved; filled in by the change that needs it


def downgrade() -> None:
    pass
