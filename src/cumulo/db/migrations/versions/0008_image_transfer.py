"""images by id and sha256: file digests in the catalogue, image exports done by agents

Revision ID: 0008
Revises: 0007
"""

import hashlib
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_FILES = ("disk", "kernel", "initrd")


def _digest(path: str | None) -> tuple[int, str]:
    """(size, sha256) of a file of the API's image store; (0, "") when it is gone (the image
    then cannot be fetched by a host, and says so)."""
    if not path:
        return 0, ""
    h = hashlib.sha256()
    try:
        with Path(path).open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
            return f.tell(), h.hexdigest()
    except OSError:
        return 0, ""


def upgrade() -> None:
    for name in _FILES:
        op.add_column("images", sa.Column(f"{name}_sha256", sa.String(64), nullable=False,
                                          server_default=""))
        op.add_column("images", sa.Column(f"{name}_size", sa.BigInteger(), nullable=False,
                                          server_default="0"))
    # Images recorded before: their files are on this (the API's) machine; hosts will fetch
    # them by digest from now on.
    conn = op.get_bind()
    images = sa.table("images", sa.column("id", sa.String), sa.column("disk_path", sa.Text),
                      sa.column("kernel_path", sa.Text), sa.column("initrd_path", sa.Text),
                      *(sa.column(f"{n}_sha256", sa.String) for n in _FILES),
                      *(sa.column(f"{n}_size", sa.BigInteger) for n in _FILES))
    rows = conn.execute(sa.select(images.c.id, images.c.disk_path, images.c.kernel_path,
                                  images.c.initrd_path)).all()
    for image_id, *paths in rows:
        values: dict[str, object] = {}
        for name, path in zip(_FILES, paths, strict=True):
            values[f"{name}_size"], values[f"{name}_sha256"] = _digest(path)
        conn.execute(sa.update(images).where(images.c.id == image_id).values(**values))
    op.create_table(
        "image_exports",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("instance_id", sa.String(length=32), nullable=False),
        sa.Column("host_id", sa.String(length=32), nullable=False),
        sa.Column("project_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False, server_default=""),
        sa.Column("reason", sa.Text(), nullable=False, server_default=""),
        sa.Column("image_id", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["instance_id"], ["instances.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_image_exports_instance_id", "image_exports", ["instance_id"])


def downgrade() -> None:
    op.drop_index("ix_image_exports_instance_id", table_name="image_exports")
    op.drop_table("image_exports")
    for name in reversed(_FILES):
        op.drop_column("images", f"{name}_size")
        op.drop_column("images", f"{name}_sha256")
