"""ICMP echo packets as the edge reads and writes them (pure): the echo requests the kernel
queues to it (a whole IPv4 packet) and the replies its own raw socket receives."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

ECHO_REPLY = 0
ECHO_REQUEST = 8
_ICMP = 1
_MORE_FRAGMENTS_OR_OFFSET = 0x3FFF


@dataclass(frozen=True)
class Echo:
    src: str
    dst: str
    ident: int
    seq: int
    data: bytes


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def parse(packet: bytes, icmp_type: int) -> Echo | None:
    """The echo of type `icmp_type` an IPv4 packet carries; None for anything else (another
    protocol or type, a fragment, a truncated or malformed packet)."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    total = struct.unpack("!H", packet[2:4])[0]
    flags_offset = struct.unpack("!H", packet[6:8])[0]
    if (ihl < 20 or packet[9] != _ICMP or flags_offset & _MORE_FRAGMENTS_OR_OFFSET
            or total > len(packet) or total < ihl + 8):
        return None
    body = packet[ihl:total]
    kind, code, _, ident, seq = struct.unpack("!BBHHH", body[:8])
    if kind != icmp_type or code != 0:
        return None
    return Echo(src=socket.inet_ntoa(packet[12:16]), dst=socket.inet_ntoa(packet[16:20]),
                ident=ident, seq=seq, data=body[8:])


def echo_request(ident: int, seq: int, data: bytes) -> bytes:
    """An ICMP echo request (the ICMP part: a raw socket adds the IPv4 header)."""
    head = struct.pack("!BBHHH", ECHO_REQUEST, 0, 0, ident, seq)
    return struct.pack("!BBHHH", ECHO_REQUEST, 0, checksum(head + data), ident, seq) + data


def echo_reply_packet(src: str, dst: str, ident: int, seq: int, data: bytes) -> bytes:
    """A whole IPv4 packet answering an echo request (for a raw socket with IP_HDRINCL: the
    kernel fills in the total length, the packet id and the header checksum)."""
    head = struct.pack("!BBHHH", ECHO_REPLY, 0, 0, ident, seq)
    icmp = struct.pack("!BBHHH", ECHO_REPLY, 0, checksum(head + data), ident, seq) + data
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0, 64, _ICMP, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return ip + icmp
