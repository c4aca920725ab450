"""`Filter.N.Name` / `Filter.N.Value.M`, matched as EC2 does: the filters are ANDed, the
values of one filter ORed, `*` and `?` are wildcards; `tag:KEY` and `tag-key` work on every
resource with tags."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TypeVar

from cumulo.api.ec2.errors import Ec2Error, invalid
from cumulo.api.ec2.params import Params

T = TypeVar("T")


@dataclass(frozen=True)
class Filter:
    name: str
    values: tuple[str, ...]


def parse(params: Params, known: Collection[str]) -> list[Filter]:
    out = []
    for f in params.structs("Filter"):
        name = f.req("Name")
        if name not in known and not name.startswith("tag:") and name != "tag-key":
            raise invalid(f"The filter '{name}' is invalid")
        out.append(Filter(name, tuple(f.items("Value"))))
    return out


def matches(filters: Sequence[Filter], facts: Mapping[str, object],
            tags: Mapping[str, str]) -> bool:
    for f in filters:
        if f.name.startswith("tag:"):
            have = [tags[f.name[4:]]] if f.name[4:] in tags else []
        elif f.name == "tag-key":
            have = list(tags)
        else:
            value = facts.get(f.name)
            have = [str(v) for v in value] if isinstance(value, list | tuple) else \
                [] if value is None else [_text(value)]
        if not any(fnmatchcase(h, v) for h in have for v in f.values):
            return False
    return True


def _text(value: object) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def page(items: Sequence[T], params: Params, *, low: int = 5, high: int = 1000
         ) -> tuple[list[T], str | None]:
    """One page of `items` by MaxResults / NextToken; the token of the next page or None."""
    size = params.integer("MaxResults", low=low, high=high)
    token = params.text("NextToken")
    start = 0
    if token:
        try:
            start = int(base64.urlsafe_b64decode(token.encode()).decode().removeprefix("at:"))
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise Ec2Error("InvalidParameterValue", f"invalid NextToken {token!r}") from None
        if not 0 <= start <= len(items):
            raise Ec2Error("InvalidParameterValue", f"invalid NextToken {token!r}")
    if size is None:
        return list(items[start:]), None
    end = start + size
    more = base64.urlsafe_b64encode(f"at:{end}".encode()).decode() if end < len(items) else None
    return list(items[start:end]), more


def tag_set(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in sorted(tags.items())]
