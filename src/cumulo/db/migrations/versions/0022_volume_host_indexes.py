"""indexes for a host's volumes and snapshots

Revision ID: 0022
Revises: 0021
"""

from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every full answer to a host's long-poll reads the volumes it stores or opens over NBD
    # (client_host_id), those attached to its instances (attached_to) and the snapshots it
    # keeps (host_id): without these the read scans both tables, every 5-10 s per host
    # (docs/benchmarks.md, Findings 2026-12-07).
    with op.batch_alter_table("volumes") as batch:
        batch.create_index(batch.f("ix_volumes_client_host_id"), ["client_host_id"])
        batch.create_index(batch.f("ix_volumes_attached_to"), ["attached_to"])
    with op.batch_alter_table("snapshots") as batch:
        batch.create_index(batch.f("ix_snapshots_host_id"), ["host_id"])


def downgrade() -> None:
    with op.batch_alter_table("snapshots") as batch:
        batch.drop_index(batch.f("ix_snapshots_host_id"))
    with op.batch_alter_table("volumes") as batch:
        batch.drop_index(batch.f("ix_volumes_attached_to"))
        batch.drop_index(batch.f("ix_volumes_client_host_id"))
