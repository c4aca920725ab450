"""EC2 access keys and client tokens

Revision ID: 0007
Revises: 0006
"""

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # reserved: #22 (access keys, client tokens)


def downgrade() -> None:
    pass
