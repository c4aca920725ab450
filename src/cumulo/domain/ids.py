"""Resource identifiers: EC2-style `<prefix>-<17 hex>`.

Short on purpose: instance ids appear in unix socket paths (108-byte limit) and in tap names.
"""

from __future__ import annotations

import re
import secrets

_ID_RE = re.compile(r"^[a-z]{1,4}-[0-9a-f]{17}\Z")


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(9)[:17]}"


def is_id(value: str) -> bool:
    return bool(_ID_RE.match(value))
