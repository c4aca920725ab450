"""Text no field may hold, refused for every request of the user-facing API.

A NUL character cannot be stored in PostgreSQL's text (the driver raises, on a lookup as well
as on a write) and an unpaired UTF-16 surrogate (JSON can spell one: "\\ud800") cannot be
encoded to UTF-8 at all: either would fail deep inside a service as a 500. No valid name, key,
address or description contains one, so both are refused at the door, with one error code,
before any service sees them: path and query parameters by `refuse_unstorable`, JSON bodies by
the `Input` base model.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ConfigDict, model_validator

from cumulo.domain.errors import InvalidInput

_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


def _find(value: Any, where: str) -> str | None:
    """Where the first unstorable text in `value` is (None: nowhere)."""
    if isinstance(value, str):
        return where if _UNSTORABLE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _find(key, where) or _find(item, f"{where}.{key}" if where else str(key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _find(item, f"{where}.{i}" if where else str(i))
            if found is not None:
                return found
    return None


def check(value: Any, where: str) -> None:
    found = _find(value, where)
    if found is not None:
        raise InvalidInput(
            f"{found or 'body'}: NUL characters and unpaired surrogates are not allowed",
            code="invalid_character",
        )


async def refuse_unstorable(request: Request) -> None:
    """Route dependency: path and query parameters (URL decoding never yields a surrogate:
    undecodable bytes become U+FFFD)."""
    check(request.path_params, "")
    for key, value in request.query_params.multi_items():
        check({key: value}, "")


class Input(BaseModel):
    """Base of the API's JSON request bodies: types as the OpenAPI document states them (no
    "1" for an integer, no true for 1, no "yes" for a boolean) and no field the document does
    not list (a misspelt optional field would otherwise be dropped without a word)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        # InvalidInput is not a ValueError: pydantic lets it through, and the API answers it
        # as it answers the path's (400 invalid_character), not as a schema error.
        check(data, "")
        return data
