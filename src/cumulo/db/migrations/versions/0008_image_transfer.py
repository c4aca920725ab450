"""images by id and sha256

Revision ID: 0008
Revises: 0007
"""

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # reserved: #18 (images by id and sha256, agent image caches)


def downgrade() -> None:
    pass
