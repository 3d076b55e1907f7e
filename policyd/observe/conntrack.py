"""New connections, read from the kernel: a ctnetlink socket subscribed to conntrack's NEW
events in the calling thread's network namespace (the node's), and the pure parsing of what
it delivers.

The kernel reports a connection when its entry is confirmed, that is when its first packet
has passed every hook: a connection a policy drops is never reported. The event carries the
original tuple and the reply tuple (addresses, protocol, ports;
linux/netfilter/nfnetlink_conntrack.h). The destination is read from the reply tuple: after
kube-proxy's DNAT of a Service address, the pod that answers is its source.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from .netlink import Subscription, attrs, messages
from .nflog import PROTOCOLS

NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
NFNLGRP_CONNTRACK_NEW = 1
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY = 1, 2
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3


@dataclass(frozen=True)
class Connection:
    """A new connection: who opened it, and who answers (after any DNAT)."""

    src: str
    dst: str
    protocol: str  # TCP, UDP, SCTP, ICMP, ICMPv6 or the IP protocol number
    dport: int | None  # TCP/UDP/SCTP only


Tuple = tuple[str, str, int, int | None, int | None]  # src, dst, protocol number, sport, dport


def _tuple(raw: bytes) -> Tuple | None:
    t = attrs(raw)
    ip, proto = attrs(t.get(CTA_TUPLE_IP, b"")), attrs(t.get(CTA_TUPLE_PROTO, b""))
    if CTA_IP_V4_SRC in ip and CTA_IP_V4_DST in ip:
        family, src, dst = socket.AF_INET, ip[CTA_IP_V4_SRC], ip[CTA_IP_V4_DST]
    elif CTA_IP_V6_SRC in ip and CTA_IP_V6_DST in ip:
        family, src, dst = socket.AF_INET6, ip[CTA_IP_V6_SRC], ip[CTA_IP_V6_DST]
    else:
        return None
    if CTA_PROTO_NUM not in proto:
        return None
    num = proto[CTA_PROTO_NUM][0]

    def port(kind: int) -> int | None:
        return int(struct.unpack("!H", proto[kind][:2])[0]) if num in (6, 17, 132) and kind in proto else None

    # inet_ntop writes what ipaddress would (compressed IPv6), at a tenth of the cost: this
    # runs once per new connection on the node.
    return (socket.inet_ntop(family, src), socket.inet_ntop(family, dst), num, port(CTA_PROTO_SRC_PORT), port(CTA_PROTO_DST_PORT))


def connection(attrs: dict[int, bytes]) -> Connection | None:
    """The connection an event's tuples describe: the source from the original direction,
    the destination and its port from the reply's source (the same unless DNAT)."""
    orig = _tuple(attrs[CTA_TUPLE_ORIG]) if CTA_TUPLE_ORIG in attrs else None
    if orig is None:
        return None
    reply = _tuple(attrs[CTA_TUPLE_REPLY]) if CTA_TUPLE_REPLY in attrs else None
    dst, dport = (reply[0], reply[3]) if reply is not None else (orig[1], orig[4])
    return Connection(orig[0], dst, PROTOCOLS.get(orig[2], str(orig[2])), dport)


def parse(data: bytes) -> list[Connection]:
    """Every new connection in one datagram from the socket (other messages are skipped)."""
    found = (connection(a) for a in messages(data, (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW))
    return [c for c in found if c is not None]


class ConntrackEvents(Subscription):
    """Subscribed to NEW events in the current network namespace until closed. `overruns`
    counts the times the kernel dropped events because this socket's buffer was full
    (ENOBUFS): records lost, connections never slowed."""

    def __init__(self, rcvbuf: int = 1 << 20) -> None:
        super().__init__(rcvbuf, groups=1 << (NFNLGRP_CONNTRACK_NEW - 1))

    def recv(self, timeout: float | None = None) -> list[Connection]:
        return parse(self.datagram(timeout))
