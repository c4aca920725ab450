"""A create checked without creating anything: what the web console asks while a user fills
in its form, so that a bad choice is explained next to its field before it is submitted
(a script may ask the same: POST /v1/instances/validate)."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError

from cumulo.domain.errors import Conflict
from cumulo.services import instance_create
from cumulo.services.context import Principal, Services
from cumulo.services.create_batch import CreateBatch


class _DryRun(Exception):
    """Raised at the end of a successful check: the transaction rolls back."""


def check_create(svc: Services, who: Principal, project: str | None,
                 req: instance_create.CreateInstance) -> None:
    """Every check a create makes (name, size, zone capacity, image, keys, groups, network,
    address) and the error it would raise; nothing is written."""
    size = instance_create._size(svc, req)
    try:
        with svc.db.session() as s:
            batch = CreateBatch(s, svc.settings)
            batch.read_limits([batch.project(who, project)])  # quotas: as a create would
            call = instance_create.CreateCall(who, project, req)
            instance_create._create_one(svc, batch, call, size)
            raise _DryRun
    except _DryRun:
        return
    except IntegrityError:
        raise Conflict(f"an instance named {req.name!r} or its address is already taken",
                       code="name_taken") from None
