"""The UDP heartbeat's datagram (cumulo.beats): only the token's holder can make one, and
nothing but a host name, a number and a MAC gets through."""

from __future__ import annotations

import pytest

from cumulo import beats

KEY = beats.key_of("cmo_secret")


def test_a_beat_reads_back_and_verifies_with_its_key_only() -> None:
    data = beats.encode("hv-01", 1_733_000_000_000_000_000, KEY)
    assert beats.decode(data) is not None
    name, seq, mac = beats.decode(data) or ("", 0, "")
    assert (name, seq) == ("hv-01", 1_733_000_000_000_000_000)
    assert beats.verify(name, seq, mac, KEY)
    assert not beats.verify(name, seq, mac, beats.key_of("cmo_other"))
    assert not beats.verify("hv-02", seq, mac, KEY)  # the MAC covers the name ...
    assert not beats.verify(name, seq + 1, mac, KEY)  # ... and the number


def test_the_key_is_the_digest_the_api_keeps_of_the_token() -> None:
    from cumulo.services.auth import token_digest

    assert beats.key_of("cmo_secret") == token_digest("cmo_secret").encode()


@pytest.mark.parametrize("data", [
    b"",
    b"cumulo-beat/1 hv-01 12",  # no MAC
    b"cumulo-beat/2 hv-01 12 " + b"a" * 64,  # another version
    b"cumulo-beat/1 HV-01 12 " + b"a" * 64,  # not a DNS label
    b"cumulo-beat/1 hv-01; 12 " + b"a" * 64,
    b"cumulo-beat/1 -hv 12 " + b"a" * 64,
    b"cumulo-beat/1 " + b"h" * 64 + b" 12 " + b"a" * 64,  # a label is 63 at most
    b"cumulo-beat/1 hv-01 -12 " + b"a" * 64,
    b"cumulo-beat/1 hv-01 12 " + b"A" * 64,
    b"cumulo-beat/1 hv-01 12 " + b"a" * 63,
    b"cumulo-beat/1 hv-01 12 " + b"a" * 64 + b"\n",
    b"cumulo-beat/1 hv-01 " + b"1" * 21 + b" " + b"a" * 64,
    b"cumulo-beat/1 hv-01 12 " + b"a" * 64 + b" " * 200,
    "cumulo-beat/1 hv-é 12 ".encode() + b"a" * 64,
])
def test_anything_else_is_not_a_beat(data: bytes) -> None:
    assert beats.decode(data) is None
