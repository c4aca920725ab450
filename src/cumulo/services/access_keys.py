"""EC2 access keys: per project, the secret shown once.

SigV4 signs with the secret itself, so the server must be able to read it back: a hash would
not do. Secrets are stored encrypted (AES-GCM, the key id as associated data so that a
ciphertext cannot be moved to another key's row) with the server key of `Services`.
"""

from __future__ import annotations

import base64
import os
import secrets
import string
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel
from sqlalchemy import select

from cumulo.db.tables import AccessKeyRow, ProjectRow
from cumulo.domain.errors import Conflict, CumuloError, NotFound
from cumulo.services.auth import scope_project
from cumulo.services.context import Principal, Role, Services

SERVER_KEY_BYTES = 32
_NONCE_BYTES = 12
_ID_ALPHABET = string.ascii_uppercase + string.digits
_SECRET_ALPHABET = string.ascii_letters + string.digits + "+/"


class AccessKeyView(BaseModel):
    access_key_id: str
    project: str
    created_at: datetime
    secret_access_key: str | None = None  # only in the answer to `create`, never stored clear


@dataclass(frozen=True)
class KeyOwner:
    """Who an access key acts as, and the secret its signatures are checked with."""

    principal: Principal
    project: str
    secret: str


def load_server_key(path: Path) -> bytes:
    """The server key in `path` (base64), made (mode 0600) when the file does not exist."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(base64.b64encode(secrets.token_bytes(SERVER_KEY_BYTES)).decode() + "\n")
    key = base64.b64decode(path.read_text().strip())
    if len(key) != SERVER_KEY_BYTES:
        raise CumuloError(f"{path}: not a server key (base64 of {SERVER_KEY_BYTES} bytes)",
                          code="invalid_config")
    return key


def _cipher(svc: Services) -> AESGCM:
    if svc.server_key is None:
        raise Conflict("this API has no server key: access keys are unavailable",
                       code="no_server_key")
    return AESGCM(svc.server_key)


def _view(row: AccessKeyRow, project: str, secret: str | None = None) -> AccessKeyView:
    return AccessKeyView(access_key_id=row.id, project=project, created_at=row.created_at,
                         secret_access_key=secret)


def create(svc: Services, who: Principal, project: str | None) -> AccessKeyView:
    cipher = _cipher(svc)
    key_id = "AKIA" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(16))
    secret = "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(40))
    nonce = secrets.token_bytes(_NONCE_BYTES)
    sealed = nonce + cipher.encrypt(nonce, secret.encode(), key_id.encode())
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        row = AccessKeyRow(id=key_id, project_id=prj.id, secret=sealed)
        s.add(row)
        s.flush()
        return _view(row, prj.name, secret)


def list_all(svc: Services, who: Principal, project: str | None) -> list[AccessKeyView]:
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        rows = s.scalars(select(AccessKeyRow).where(AccessKeyRow.project_id == prj.id)
                         .order_by(AccessKeyRow.created_at, AccessKeyRow.id))
        return [_view(r, prj.name) for r in rows]


def delete(svc: Services, who: Principal, project: str | None, key_id: str) -> None:
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        row = s.get(AccessKeyRow, key_id)
        if row is None or row.project_id != prj.id:
            raise NotFound(f"no access key {key_id!r} in project {prj.name!r}",
                           code="unknown_access_key")
        s.delete(row)


def owner(svc: Services, key_id: str) -> KeyOwner | None:
    """The project and secret of access key `key_id`; None if there is no such key."""
    cipher = _cipher(svc)
    with svc.db.session() as s:
        found = s.execute(select(AccessKeyRow, ProjectRow.name)
                          .join(ProjectRow, ProjectRow.id == AccessKeyRow.project_id)
                          .where(AccessKeyRow.id == key_id)).first()
        if found is None:
            return None
        row, project = found
        sealed = bytes(row.secret)
    try:
        secret = cipher.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], key_id.encode())
    except InvalidTag:
        return None  # sealed with another server key: unusable, as if it did not exist
    return KeyOwner(principal=Principal(role=Role.MEMBER, project_id=row.project_id),
                    project=project, secret=secret.decode())
