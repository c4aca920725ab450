"""EC2 access keys of a project (admins for any project, a project's token for its own)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from cumulo.api.deps import Svc, Who
from cumulo.api.openapi import raises
from cumulo.domain.errors import Conflict
from cumulo.services import access_keys
from cumulo.services.access_keys import AccessKeyView

router = APIRouter(prefix="/v1/access-keys", tags=["access keys"])


@router.post("", status_code=201, responses=raises(Conflict))  # no_server_key
def create(svc: Svc, who: Who, project: str | None = None) -> AccessKeyView:
    """A new key; its `secret_access_key` is in this answer only."""
    return access_keys.create(svc, who, project)


@router.get("")
def list_all(svc: Svc, who: Who, project: str | None = None) -> list[AccessKeyView]:
    return access_keys.list_all(svc, who, project)


@router.delete("/{key_id}", status_code=204)
def delete(svc: Svc, who: Who, key_id: str, project: str | None = None) -> Response:
    access_keys.delete(svc, who, project, key_id)
    return Response(status_code=204)
