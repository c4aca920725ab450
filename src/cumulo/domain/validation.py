"""Validation of everything a user types. Nothing reaches a path, a command line or a file
before passing through one of these functions."""

from __future__ import annotations

import base64
import binascii
import re

from cumulo.domain.errors import InvalidInput

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
MAX_USER_DATA_BYTES = 64 * 1024
MAX_TAGS = 50
_TAG_KEY = re.compile(r"^[A-Za-z0-9_.:/=+@-]{1,128}\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]")


def dns_label(value: str, what: str = "name") -> str:
    """A DNS label: 1-63 of a-z, 0-9 and '-', not starting or ending with '-'."""
    if not _DNS_LABEL.match(value):
        raise InvalidInput(
            f"invalid {what} {value!r}: use 1-63 characters a-z, 0-9 and '-', "
            "starting and ending with a letter or digit",
            code="invalid_name",
        )
    return value


def short_text(value: str, what: str, maximum: int, code: str = "invalid_input") -> str:
    """Free text shown as it is (a description, an OS name, a tag's value): at most `maximum`
    characters, none of them a control character (a newline, a terminal escape)."""
    if len(value) > maximum or _CONTROL.search(value):
        raise InvalidInput(f"{what}: at most {maximum} printable characters", code=code)
    return value


def one_line(text: str, limit: int) -> str:
    """`text` as one line of at most `limit` characters, for a terminal: control characters
    (newlines, escapes, NUL) are spelled out ("\\n") rather than acted on."""
    text = _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# The largest value an INTEGER column holds (32-bit on PostgreSQL): the default bound of every
# size, so that no number a user types overflows the database (a 500) whatever its own limit.
MAX_INTEGER = 2**31 - 1
MAX_BANDWIDTH_MBPS = 100_000  # 100 Gbit/s: more than any NIC of a host here


def positive(value: int, what: str, *, maximum: int = MAX_INTEGER) -> int:
    if value <= 0:
        raise InvalidInput(f"{what} must be greater than 0 (got {value})", code="invalid_size")
    if value > maximum:
        raise InvalidInput(f"{what} {value} exceeds the maximum of {maximum}", code="invalid_size")
    return value


def user_data(value: bytes | None) -> bytes | None:
    if value is not None and len(value) > MAX_USER_DATA_BYTES:
        raise InvalidInput(
            f"user-data is {len(value)} bytes; the limit is {MAX_USER_DATA_BYTES} (64 KiB)",
            code="user_data_too_large",
        )
    return value


def tags(value: dict[str, str]) -> dict[str, str]:
    if len(value) > MAX_TAGS:
        raise InvalidInput(f"at most {MAX_TAGS} tags", code="invalid_tag")
    for key, val in value.items():
        if not _TAG_KEY.match(key):
            raise InvalidInput(f"invalid tag key {key!r}", code="invalid_tag")
        short_text(val, f"the value of tag {key!r}", 256, code="invalid_tag")
    return value


# No operating system this cloud runs boots in less than 64 MiB; an imported image that says
# nothing is taken to need 128 MiB (a small cloud image; `--min-ram` says more or less).
MIN_RAM_FLOOR_MIB = 64
DEFAULT_MIN_RAM_MIB = 128
MAX_RAM_MIB = 16 * 2**20  # 16 TiB


def min_ram_mib(value: int) -> int:
    """The least RAM an image says it needs."""
    if not MIN_RAM_FLOOR_MIB <= value <= MAX_RAM_MIB:
        raise InvalidInput(f"minimum RAM must be between {MIN_RAM_FLOOR_MIB} and {MAX_RAM_MIB} "
                           f"MiB (got {value})", code="invalid_size")
    return value


def enough_ram(ram_mib: int, image_min_mib: int, image: str, arch: str) -> int:
    """An instance's RAM, refused below what its image boots in (it would end in `error`
    while holding its addresses: "initrd is too large")."""
    if ram_mib < image_min_mib:
        raise InvalidInput(f"{ram_mib} MiB of RAM is too little for image {image!r} ({arch}): "
                           f"it needs at least {image_min_mib} MiB", code="invalid_size")
    return ram_mib


def base64_user_data(text: str | None) -> bytes | None:
    """User-data as the APIs carry it (base64), decoded."""
    if text is None:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("user_data must be base64", code="invalid_user_data") from None
