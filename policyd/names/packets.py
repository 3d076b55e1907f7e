"""The IP and transport headers of a queued packet (pure): who it goes to, and its DNS bytes
(a UDP datagram's payload, or a TCP segment's, with its sequence number and flags)."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

UDP, TCP = 17, 6
FIN, SYN, RST = 0x01, 0x02, 0x04


class NotDns(Exception):
    pass


@dataclass(frozen=True)
class Packet:
    src: str
    dst: str
    family: int
    proto: int  # UDP or TCP
    sport: int
    dport: int
    payload: bytes
    seq: int = 0  # TCP only
    flags: int = 0  # TCP only

    @property
    def flow(self) -> tuple[str, str, int, int]:
        return (self.src, self.dst, self.sport, self.dport)


def parse(data: bytes) -> Packet:
    """An IPv4 or IPv6 packet carrying UDP or TCP (the network header first, as NFQUEUE
    hands it over); NotDns otherwise."""
    if len(data) >= 20 and data[0] >> 4 == 4:
        ihl = (data[0] & 0x0F) * 4
        total = struct.unpack_from("!H", data, 2)[0]
        if (struct.unpack_from("!H", data, 6)[0] & 0x3FFF) != 0:
            raise NotDns("an IPv4 fragment")  # (conntrack reassembles before the filter hooks)
        proto, src, dst, family = data[9], data[12:16], data[16:20], 4
        l4 = data[ihl:total]
    elif len(data) >= 40 and data[0] >> 4 == 6:
        length = struct.unpack_from("!H", data, 4)[0]
        proto, src, dst, family = data[6], data[8:24], data[24:40], 6
        l4 = data[40:40 + length]
    else:
        raise NotDns("not an IPv4 or IPv6 packet")
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    s, d = socket.inet_ntop(af, src), socket.inet_ntop(af, dst)
    if proto == UDP and len(l4) >= 8:
        sport, dport, length = struct.unpack_from("!HHH", l4)
        return Packet(s, d, family, UDP, sport, dport, l4[8:max(8, length)])
    if proto == TCP and len(l4) >= 20:
        sport, dport, seq = struct.unpack_from("!HHI", l4)
        offset = (l4[12] >> 4) * 4
        return Packet(s, d, family, TCP, sport, dport, l4[offset:], seq, l4[13])
    raise NotDns(f"IP protocol {proto}, not UDP or TCP (or a short header)")
