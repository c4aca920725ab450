"""dedicated hosts

Revision ID: 0013
Revises: 0012
"""

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # reserved; filled in by the change that needs it


def downgrade() -> None:
    pass
