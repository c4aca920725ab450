"""the edge: public addresses owned outside the host agents (no schema change: the edge's
token is an API token of role `edge`, and its table is read from existing rows)

Revision ID: 0016
Revises: 0015
"""

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # nothing to change (kept so that the chain's revision numbers stay as released)


def downgrade() -> None:
    pass
