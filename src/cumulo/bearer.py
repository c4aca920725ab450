"""The check of a fixed bearer token (the metrics token), shared by the API's /metrics and the
agents' (which import nothing of the API: agents never reach the database)."""

from __future__ import annotations

import hmac


def token_matches(authorization: str | None, token: str) -> bool:
    """`Authorization: Bearer <token>` names `token` (compared in constant time)."""
    return bool(token) and hmac.compare_digest((authorization or "").encode(),
                                               f"Bearer {token}".encode())
