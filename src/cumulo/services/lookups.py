"""Finding a project's resources by name or id, below the use cases: instances, volumes and
public IPs each find the others' rows here, so none of them imports another's module."""

from __future__ import annotations

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from cumulo.db.tables import InstanceRow, ProjectRow
from cumulo.domain.errors import NotFound
from cumulo.domain.ids import is_id

_IN_PROJECT = select(InstanceRow).where(InstanceRow.project_id == bindparam("project"))
_BY_ID = _IN_PROJECT.where(InstanceRow.id == bindparam("ref"))
_BY_NAME = _IN_PROJECT.where(InstanceRow.name == bindparam("ref"))


def instance_row(s: Session, prj: ProjectRow, ref: str) -> InstanceRow:
    """The project's instance named or numbered `ref` (NotFound in the caller's words: it
    never says whether another project has one)."""
    row = s.scalar(_BY_ID if is_id(ref) else _BY_NAME, {"project": prj.id, "ref": ref})
    if row is None:
        raise NotFound(f"no instance {ref!r} in project {prj.name!r}", code="unknown_instance")
    return row
