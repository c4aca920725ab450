"""Deleted instances' records (EC2 shows them `terminated`) are forgotten past their
retention by the API's periodic sweep, not by each delete."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from cumulo.db.tables import ProjectRow, TerminatedInstanceRow
from cumulo.services import terminated
from cumulo.services.context import Services


def test_purge_forgets_only_the_records_past_the_retention(svc: Services) -> None:
    svc.settings.ec2.terminated_visible_s = 600
    now = datetime.now(UTC)
    with svc.db.session() as s:
        project = s.scalars(select(ProjectRow.id)).first()
        assert project is not None
        for iid, age_s in (("i-old", 601), ("i-older", 86400), ("i-new", 540)):
            s.add(TerminatedInstanceRow(id=iid, project_id=project, view={},
                                        terminated_at=now - timedelta(seconds=age_s)))
    assert terminated.purge(svc) == 2
    assert terminated.purge(svc) == 0  # nothing more to forget
    with svc.db.session() as s:
        assert list(s.scalars(select(TerminatedInstanceRow.id))) == ["i-new"]
