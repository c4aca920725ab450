"""A request's parameters, flat as EC2 sends them (`Filter.1.Value.2=x`), read by shape."""

from __future__ import annotations

import re
from collections.abc import Mapping

from cumulo.api.ec2.errors import Ec2Error, invalid, missing

_INDEXED = re.compile(r"^(\d+)(?:\.|\Z)")
MAX_LIST = 1000  # items of one list parameter (EC2's own limits are lower)


class Params:
    def __init__(self, flat: Mapping[str, str], prefix: str = "") -> None:
        self._flat = flat
        self._prefix = prefix

    def _key(self, name: str) -> str:
        return f"{self._prefix}{name}"

    def text(self, name: str, *, required: bool = False) -> str | None:
        value = self._flat.get(self._key(name))
        if value is None and required:
            raise missing(self._key(name))
        return value

    def req(self, name: str) -> str:
        value = self.text(name, required=True)
        assert value is not None
        return value

    def integer(self, name: str, *, default: int | None = None, low: int = 0,
            high: int = 2**31 - 1) -> int | None:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise invalid(f"{self._key(name)} must be an integer (got {raw!r})") from None
        if not low <= value <= high:
            raise invalid(f"{self._key(name)} must be between {low} and {high} (got {value})")
        return value

    def flag(self, name: str, *, default: bool = False) -> bool:
        raw = self.text(name)
        if raw is None:
            return default
        if raw.lower() not in ("true", "false"):
            raise invalid(f"{self._key(name)} must be true or false (got {raw!r})")
        return raw.lower() == "true"

    def _indexes(self, name: str) -> list[int]:
        head = self._key(name) + "."
        found: set[int] = set()
        for key in self._flat:
            if key.startswith(head):
                m = _INDEXED.match(key[len(head):])
                if m is None:
                    raise invalid(f"{key}: a list member needs a number after {head}")
                found.add(int(m.group(1)))
        if len(found) > MAX_LIST:
            raise Ec2Error("InvalidParameterValue", f"{head}N: at most {MAX_LIST} items")
        return sorted(found)

    def items(self, name: str) -> list[str]:
        """The values of `name.1`, `name.2`, ... in order."""
        return [self._flat[f"{self._key(name)}.{i}"] for i in self._indexes(name)
                if f"{self._key(name)}.{i}" in self._flat]

    def structs(self, name: str) -> list[Params]:
        """The members of `name.N.*`, each as Params of its own."""
        return [Params(self._flat, f"{self._key(name)}.{i}.") for i in self._indexes(name)]

    def sub(self, name: str) -> Params:
        return Params(self._flat, f"{self._key(name)}.")

    def flat(self) -> dict[str, str]:
        """Every parameter (of the whole request), as sent."""
        return dict(self._flat)

    def has(self, name: str) -> bool:
        head = self._key(name)
        return any(k == head or k.startswith(head + ".") for k in self._flat)
