"""the edge: public addresses owned outside the host agents

Revision ID: 0016
Revises: 0015
"""

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # reserved; filled in by the change that needs it


def downgrade() -> None:
    pass
