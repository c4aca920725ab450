"""SSH key pairs: import an OpenSSH public key, or create one (private key shown once)."""

from __future__ import annotations

import base64
import hashlib

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from sqlalchemy import select
from sqlalchemy.orm import Session

from cumulo.db.tables import KeyPairRow, ProjectRow
from cumulo.domain.errors import Conflict, InvalidInput, NotFound
from cumulo.domain.ids import new_id
from cumulo.domain.validation import dns_label
from cumulo.services.auth import scope_project
from cumulo.services.context import Principal, Services
from cumulo.services.views import KeyPairView

MAX_KEY_BYTES = 16 * 1024


def normalize_public_key(text: str) -> tuple[str, str]:
    """(canonical 'type base64' line, SHA256 fingerprint) or InvalidInput. Comments dropped:
    they would otherwise travel into guests' authorized_keys unchecked."""
    line = text.strip()
    if not line or len(line) > MAX_KEY_BYTES or "\n" in line:
        raise InvalidInput("the public key must be one line in OpenSSH format",
                           code="invalid_key")
    try:
        key = serialization.load_ssh_public_key(line.encode())
    except (ValueError, TypeError, IndexError, UnsupportedAlgorithm) as e:
        raise InvalidInput(f"not an OpenSSH public key: {e}", code="invalid_key") from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        raise InvalidInput("RSA keys must have at least 2048 bits", code="invalid_key")
    if not isinstance(key, rsa.RSAPublicKey | ed25519.Ed25519PublicKey |
                      ec.EllipticCurvePublicKey):
        raise InvalidInput("unsupported key type", code="invalid_key")
    canonical = key.public_bytes(serialization.Encoding.OpenSSH,
                                 serialization.PublicFormat.OpenSSH).decode()
    blob = base64.b64decode(canonical.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return canonical, f"SHA256:{digest}"


def _view(row: KeyPairRow, private: str | None = None) -> KeyPairView:
    return KeyPairView(name=row.name, fingerprint=row.fingerprint, public_key=row.public_key,
                       created_at=row.created_at, private_key=private)


def _add(s: Session, prj: ProjectRow, name: str, public: str, fp: str) -> KeyPairRow:
    if s.scalar(select(KeyPairRow.id).where(KeyPairRow.project_id == prj.id,
                                            KeyPairRow.name == name)):
        raise Conflict(f"key pair {name!r} already exists", code="name_taken")
    row = KeyPairRow(id=new_id("key"), name=name, project_id=prj.id, public_key=public,
                     fingerprint=fp)
    s.add(row)
    s.flush()
    return row


def import_key(svc: Services, who: Principal, project: str | None, name: str,
               public_key: str) -> KeyPairView:
    dns_label(name, "key pair name")
    public, fp = normalize_public_key(public_key)
    with svc.db.session() as s:
        return _view(_add(s, scope_project(s, who, project), name, public, fp))


def create(svc: Services, who: Principal, project: str | None, name: str) -> KeyPairView:
    dns_label(name, "key pair name")
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public, fp = normalize_public_key(key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode())
    with svc.db.session() as s:
        return _view(_add(s, scope_project(s, who, project), name, public, fp), private)


def list_all(svc: Services, who: Principal, project: str | None) -> list[KeyPairView]:
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        return [_view(r) for r in s.scalars(select(KeyPairRow).where(
            KeyPairRow.project_id == prj.id).order_by(KeyPairRow.name))]


def delete(svc: Services, who: Principal, project: str | None, name: str) -> None:
    with svc.db.session() as s:
        prj = scope_project(s, who, project)
        row = s.scalar(select(KeyPairRow).where(KeyPairRow.project_id == prj.id,
                                                KeyPairRow.name == name))
        if row is None:
            raise NotFound(f"no key pair {name!r}", code="unknown_keypair")
        s.delete(row)


def resolve(s: Session, prj: ProjectRow, names: list[str]) -> list[KeyPairRow]:
    rows = []
    for name in dict.fromkeys(names):
        row = s.scalar(select(KeyPairRow).where(KeyPairRow.project_id == prj.id,
                                                KeyPairRow.name == name))
        if row is None:
            raise NotFound(f"no key pair {name!r} (see `cumulo keypair list`)",
                           code="unknown_keypair")
        rows.append(row)
    return rows
