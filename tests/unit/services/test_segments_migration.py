"""Revision 0011 on a database with networks: each gets a VNI of its own, in creation order,
and a host its (empty) underlay address; downgrade and upgrade again hold."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from sqlalchemy import text

from cumulo.db.engine import Database
from cumulo.db.migrate import alembic_config


def test_networks_made_before_0011_get_distinct_vnis(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    cfg = alembic_config(db)
    command.upgrade(cfg, "0010")
    with db.engine.begin() as c:
        c.execute(text("INSERT INTO projects (id, name, created_at) VALUES "
                       "('prj-1', 'p', '2026-01-01 00:00:00')"))
        for i, at in enumerate(("2026-01-03", "2026-01-02")):
            c.execute(text(
                "INSERT INTO networks (id, name, project_id, zone, cidr, gateway, is_default,"
                " created_at) VALUES (:id, :name, 'prj-1', 'z', :cidr, :gw, 0, :at)"),
                {"id": f"net-{i}", "name": f"n{i}", "cidr": f"10.9.{i}.0/24",
                 "gw": f"10.9.{i}.1", "at": f"{at} 00:00:00"})
    command.upgrade(cfg, "head")
    with db.engine.connect() as c:
        vnis: dict[str, int] = dict(c.execute(text("SELECT id, vni FROM networks")).all())
        assert c.execute(text("SELECT underlay_ip FROM hosts")).all() == []
    assert vnis == {"net-1": 4096, "net-0": 4097}  # in the order they were made
    command.downgrade(cfg, "0010")
    command.upgrade(cfg, "head")
    db.dispose()
