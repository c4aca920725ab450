"""ICMP echo packets (pure) and the edge's nftables table for them."""

from __future__ import annotations

import socket
import struct

import pytest

from cumulo.edge import echo_gate, icmp_packets


def ipv4(payload: bytes, src: str = "127.0.0.1", dst: str = "127.100.0.5", proto: int = 1,
         flags_offset: int = 0x4000) -> bytes:
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, flags_offset, 64, proto,
                       0, socket.inet_aton(src), socket.inet_aton(dst))
    return head + payload


def test_a_request_it_builds_is_read_back_with_a_valid_checksum() -> None:
    icmp = icmp_packets.echo_request(0x1234, 7, b"hello")
    assert icmp_packets.checksum(icmp) == 0  # a correct checksum sums to zero
    echo = icmp_packets.parse(ipv4(icmp), icmp_packets.ECHO_REQUEST)
    assert echo == icmp_packets.Echo("127.0.0.1", "127.100.0.5", 0x1234, 7, b"hello")
    assert icmp_packets.parse(ipv4(icmp), icmp_packets.ECHO_REPLY) is None  # another type


@pytest.mark.parametrize("packet", [
    b"",
    ipv4(icmp_packets.echo_request(1, 1, b"x"), proto=17),  # UDP
    ipv4(icmp_packets.echo_request(1, 1, b"x"), flags_offset=0x2000),  # a first fragment
    ipv4(icmp_packets.echo_request(1, 1, b"x"))[:24],  # truncated
    b"\x60" + ipv4(icmp_packets.echo_request(1, 1, b"x"))[1:],  # IPv6 version nibble
])  # fmt: skip
def test_anything_else_is_not_an_echo(packet: bytes) -> None:
    assert icmp_packets.parse(packet, icmp_packets.ECHO_REQUEST) is None


def test_a_reply_packet_answers_the_request_from_the_public_address() -> None:
    packet = icmp_packets.echo_reply_packet("127.100.0.5", "127.0.0.1", 9, 3, b"data")
    assert icmp_packets.checksum(packet[20:]) == 0
    assert icmp_packets.parse(packet, icmp_packets.ECHO_REPLY) == icmp_packets.Echo(
        "127.100.0.5", "127.0.0.1", 9, 3, b"data")


def test_the_root_namespace_table_drops_the_kernels_replies_from_the_pool_only() -> None:
    table = echo_gate.table_name("cn-0123456789")
    assert table.startswith("cumulo_edge_") and table != echo_gate.table_name("cn-9876543210")
    script = echo_gate.ruleset(table, "127.100.0.0/16")
    assert f"table ip {table}\ndelete table ip {table}\n" in script
    assert (f"ip saddr 127.100.0.0/16 icmp type echo-reply meta mark != {echo_gate.MARK:#x} "
            "drop\n") in script
    with pytest.raises(ValueError):
        echo_gate.ruleset(table, "127.100.0.0/16; flush ruleset")
