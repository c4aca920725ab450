"""Migration 0008: images recorded before it get the size and sha256 of their files (on the
API's machine), so that hosts can fetch them by digest; a file that is gone gets none."""

from __future__ import annotations

import hashlib
from pathlib import Path

from alembic import command
from sqlalchemy import text

from cumulo.db.engine import Database
from cumulo.db.migrate import alembic_config


def test_older_images_get_their_files_digests(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    command.upgrade(alembic_config(db), "0007")
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(b"qcow2 bytes" * 1000)
    with db.engine.begin() as c:
        c.execute(text(
            "INSERT INTO images (id, name, project_id, arch, boot, default_user, os, disk_path,"
            " kernel_path, initrd_path, kernel_cmdline, virtual_size_bytes, state, created_at)"
            " VALUES ('img-0123456789abcdef0', 'old', NULL, 'x86_64', 'kernel', 'root', '',"
            " :disk, :gone, NULL, '', 0, 'available', '2026-01-01 00:00:00')"),
            {"disk": str(disk), "gone": str(tmp_path / "vmlinuz-gone")})
    command.upgrade(alembic_config(db), "head")
    with db.engine.connect() as c:
        row = c.execute(text("SELECT disk_size, disk_sha256, kernel_size, kernel_sha256,"
                             " initrd_sha256 FROM images")).one()
    assert tuple(row) == (11000, hashlib.sha256(disk.read_bytes()).hexdigest(), 0, "", "")
    db.dispose()
