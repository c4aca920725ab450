"""live migrations (a record per migration)

Revision ID: 0012
Revises: 0011
"""

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # reserved; filled in by the change that needs it


def downgrade() -> None:
    pass
