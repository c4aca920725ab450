"""Which addresses an image URL may point at (services/download_guard.py)."""

from __future__ import annotations

import ipaddress

import pytest

from cumulo.services.download_guard import is_public


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("::ffff:8.8.8.8", True),  # IPv4-mapped: the IPv4 address decides
        ("2002:808:808::1", True),  # 6to4 of a public address
        ("64:ff9b::808:808", True),  # NAT64 of a public address
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),
        # Python 3.11's is_global says True for each of these:
        ("2002:7f00:1::1", False),  # 6to4 of 127.0.0.1
        ("2002:a9fe:a9fe::1", False),  # 6to4 of the metadata address
        ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
        ("64:ff9b::7f00:1", False),  # NAT64 of 127.0.0.1
        ("::7f00:1", False),  # IPv4-compatible (deprecated)
        ("fec0::1", False),  # site-local (deprecated)
        ("224.0.0.1", False),  # multicast
        ("ff0e::1", False),
    ],
)
def test_public_means_a_unicast_address_of_the_internet(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public
