"""NFLOG, read from the kernel: a netlink socket bound to one nfnetlink_log group in the
calling thread's network namespace (the node's), and the pure parsing of what it delivers.

The protocol (linux/netfilter/nfnetlink_log.h): a config message binds the group and asks
for the first COPY_RANGE bytes of each packet; each logged packet then arrives as an
NFULNL_MSG_PACKET with attributes (prefix, payload from the network header, interfaces).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

from .netlink import Subscription, messages

NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
NFULA_CFG_CMD, NFULA_CFG_MODE = 1, 2
NFULNL_CFG_CMD_BIND, NFULNL_CFG_CMD_UNBIND = 1, 2
NFULNL_COPY_PACKET = 2
NFULA_PACKET_HDR, NFULA_IFINDEX_INDEV, NFULA_IFINDEX_OUTDEV, NFULA_PAYLOAD, NFULA_PREFIX = 1, 4, 5, 9, 10
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
COPY_RANGE = 128  # enough for an IPv6 header, extension headers aside, and the ports
PROTOCOLS = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP"}


@dataclass(frozen=True)
class Packet:
    """One logged packet: the rule's prefix, and what the headers say."""

    prefix: str
    src: str
    dst: str
    protocol: str  # TCP, UDP, SCTP, ICMP, ICMPv6 or the IP protocol number
    dport: int | None  # TCP/UDP/SCTP only
    indev: int | None
    outdev: int | None


def headers(payload: bytes) -> tuple[str, str, str, int | None]:
    """(source, destination, protocol, destination port) of an IP packet's first bytes."""
    if len(payload) >= 20 and payload[0] >> 4 == 4:
        ihl = (payload[0] & 0x0F) * 4
        proto, src, dst, l4 = payload[9], payload[12:16], payload[16:20], payload[ihl:]
    elif len(payload) >= 40 and payload[0] >> 4 == 6:
        proto, src, dst, l4 = payload[6], payload[8:24], payload[24:40], payload[40:]
    else:
        raise ValueError("not an IPv4 or IPv6 packet")
    dport = struct.unpack_from("!H", l4, 2)[0] if proto in (6, 17, 132) and len(l4) >= 4 else None
    return (str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst)), PROTOCOLS.get(proto, str(proto)), dport)


def parse(data: bytes) -> list[Packet]:
    """Every NFULNL_MSG_PACKET in one datagram from the socket (others are skipped)."""
    out = []
    for a in messages(data, (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET):
        payload = a.get(NFULA_PAYLOAD)
        if payload is not None:
            try:
                src, dst, proto, dport = headers(payload)
            except ValueError:
                src = dst = proto = "?"
                dport = None
            prefix = a.get(NFULA_PREFIX, b"").split(b"\0", 1)[0].decode(errors="replace")
            indev = struct.unpack("!I", a[NFULA_IFINDEX_INDEV])[0] if NFULA_IFINDEX_INDEV in a else None
            outdev = struct.unpack("!I", a[NFULA_IFINDEX_OUTDEV])[0] if NFULA_IFINDEX_OUTDEV in a else None
            out.append(Packet(prefix, src, dst, proto, dport, indev, outdev))
    return out


def _config(group: int, attrs: bytes, seq: int) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(group)) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG,
                       NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def _attr(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


class NflogSocket(Subscription):
    """Bound to `group` in the current network namespace until closed. `recv` returns the
    packets of one datagram; `overruns` counts the times the kernel had to drop messages
    because this socket's buffer was full (ENOBUFS): logged packets lost, never blocked."""

    def __init__(self, group: int, rcvbuf: int = 1 << 20) -> None:
        super().__init__(rcvbuf)
        self.group = group
        try:
            self._request(_attr(NFULA_CFG_CMD, struct.pack("=B", NFULNL_CFG_CMD_BIND)), 1)
            self._request(_attr(NFULA_CFG_MODE, struct.pack("!IBx", COPY_RANGE, NFULNL_COPY_PACKET)), 2)
        except BaseException:
            self.sock.close()
            raise

    def _request(self, attrs: bytes, seq: int) -> None:
        self.sock.send(_config(self.group, attrs, seq))
        while True:
            data = self.sock.recv(65536)
            length, kind = struct.unpack_from("=IH", data, 0)
            if kind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", data, 16)[0]
                if code:
                    raise OSError(code, f"binding NFLOG group {self.group}: {os.strerror(code)}")
                return

    def recv(self, timeout: float | None = None) -> list[Packet]:
        return parse(self.datagram(timeout))

    def close(self) -> None:
        try:
            self.sock.send(_config(self.group, _attr(NFULA_CFG_CMD, struct.pack("=B", NFULNL_CFG_CMD_UNBIND)), 3))
        except OSError:
            pass
        self.sock.close()
