"""Secrets the server must read back (a BMC's password): AES-GCM with the server key of
`Services`, bound to the row that holds them by the associated data, so a sealed value moved
to another row does not open."""

from __future__ import annotations

import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cumulo.domain.errors import Conflict, CumuloError
from cumulo.services.context import Services

_NONCE_BYTES = 12


def _cipher(svc: Services, what: str) -> AESGCM:
    if svc.server_key is None:
        raise Conflict(f"this API has no server key: {what} cannot be stored",
                       code="no_server_key")
    return AESGCM(svc.server_key)


def seal(svc: Services, secret: str, bound_to: str, what: str) -> bytes:
    nonce = secrets.token_bytes(_NONCE_BYTES)
    return nonce + _cipher(svc, what).encrypt(nonce, secret.encode(), bound_to.encode())


def unseal(svc: Services, sealed: bytes, bound_to: str, what: str) -> str:
    try:
        return _cipher(svc, what).decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:],
                                          bound_to.encode()).decode()
    except InvalidTag:
        raise CumuloError(f"{what} of {bound_to} does not open with this server key",
                          code="sealed_secret_unreadable") from None
