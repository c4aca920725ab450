"""A host's sign of life over UDP: the datagram an agent sends its API every few seconds.

Each long-poll answer is a heartbeat too, but an answer waits its turn on the API's event
loop: with 1,000 hosts on a busy API, polls waited more than HOST_DOWN_AFTER (12 s) in its
queues and living hosts were marked down, by the hundred (docs/benchmarks.md, Findings,
"Hosts marked down at 1,000 hosts"). A datagram is read by a thread of its own
(api/beat_listener.py), whatever the event loop is doing, and costs no HTTP request.

A datagram is `cumulo-beat/1 NAME SEQ MAC`: the host's name, a number that only grows (the
agent's clock in ns) so that a recorded datagram cannot be played again, and the HMAC-SHA256
of `NAME SEQ` keyed by the SHA-256 of the host's agent token, the digest the API keeps of it
(services.auth.token_digest): only the token's holder can make one, and the API needs no
secret it does not already hold.
"""

from __future__ import annotations

import hashlib
import hmac
import re

PREFIX = b"cumulo-beat/1 "
MAX_BYTES = 200  # a longer datagram is not a beat
_BODY = re.compile(rb"([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?) ([0-9]{1,20}) ([0-9a-f]{64})")


def key_of(token: str) -> bytes:
    """The HMAC key of an agent token: its SHA-256, hex, as the API stores it."""
    return hashlib.sha256(token.encode()).hexdigest().encode()


def _mac(key: bytes, name: str, seq: int) -> str:
    return hmac.new(key, f"{name} {seq}".encode(), hashlib.sha256).hexdigest()


def encode(name: str, seq: int, key: bytes) -> bytes:
    return PREFIX + f"{name} {seq} {_mac(key, name, seq)}".encode()


def decode(data: bytes) -> tuple[str, int, str] | None:
    """(name, seq, mac) of a well-formed datagram, else None. Not verified: see `verify`."""
    if len(data) > MAX_BYTES or not data.startswith(PREFIX):
        return None
    m = _BODY.fullmatch(data[len(PREFIX):])
    if m is None:
        return None
    return m.group(1).decode(), int(m.group(2)), m.group(3).decode()


def verify(name: str, seq: int, mac: str, key: bytes) -> bool:
    return hmac.compare_digest(_mac(key, name, seq), mac)
