"""bare-metal nodes

Revision ID: 0015
Revises: 0014
"""

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # reserved; filled in by the change that needs it


def downgrade() -> None:
    pass
