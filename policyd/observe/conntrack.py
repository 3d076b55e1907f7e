"""New connections, read from the kernel: a ctnetlink socket subscribed to conntrack's NEW
events in the calling thread's network namespace (the node's), and the pure parsing of what
it delivers; and the table itself (`ConntrackTable`): every entry dumped, one entry's mark
set or the entry deleted, for the connections a policy change revoked (reconcile/revoke.py).

The kernel reports a connection when its entry is confirmed, that is when its first packet
has passed every hook: a connection a policy drops is never reported. The event carries the
original tuple and the reply tuple (addresses, protocol, ports;
linux/netfilter/nfnetlink_conntrack.h). The destination is read from the reply tuple: after
kube-proxy's DNAT of a Service address, the pod that answers is its source.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass

from ..dataplane.netlink import NLA_F_NESTED, NLM_F_ACK, NLM_F_REQUEST, NetfilterSocket, attr
from .netlink import Subscription, attrs, messages
from .nflog import PROTOCOLS

NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE = 0, 1, 2
NLM_F_DUMP = 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
CTA_MARK, CTA_ID, CTA_MARK_MASK, CTA_FILTER = 8, 12, 21, 25
CTA_FILTER_ORIG_FLAGS, CTA_FILTER_REPLY_FLAGS = 1, 2
CTA_PROTOINFO, CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 4, 1, 1
TCP_CONNTRACK_TIME_WAIT, TCP_CONNTRACK_CLOSE = 7, 8
FILTER_IP_SRC, FILTER_IP_DST = 1 << 0, 1 << 1  # the kernel's CTA_FILTER_F_CTA_IP_SRC / _DST
FILTERED_DUMPS = 16  # addresses asked of the kernel one by one (three dumps each); more: one dump, tested here
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


@dataclass(frozen=True)
class Tracked:
    """One entry of the conntrack table: the connection it tracks, and how to name it to
    the kernel again (its original tuple as the kernel wrote it, its id)."""

    connection: Connection
    family: int
    tuple_orig: bytes  # the CTA_TUPLE_ORIG payload, echoed back to name exactly this entry
    ident: bytes  # CTA_ID
    mark: int = 0
    closed: bool = False  # a TCP connection in TIME_WAIT or CLOSE: nothing flows any more


class ConntrackTable:
    """The conntrack table of the network namespace this was made in (the node's)."""

    def __init__(self) -> None:
        self.nl = NetfilterSocket()
        self.filters = True  # the kernel filters dumps (CTA_FILTER); False once it refused

    def dump(self, only: set[bytes] | None = None) -> list[Tracked]:
        """Every entry, both families; with `only` (packed addresses), the entries that have
        one of them as the original source or destination or the reply's source (the
        answering pod after DNAT). A few addresses are filtered by the kernel (CTA_FILTER,
        Linux 5.9): a busy node's table is mostly other connections, and the kernel walks it
        without copying them to us; many, or a kernel without the filter, are tested as bytes
        in each entry's message before any parsing."""
        if only is not None and len(only) <= FILTERED_DUMPS and self.filters:
            try:
                seen: dict[bytes, Tracked] = {}
                for packed in only:
                    for t in self._filtered(packed):
                        seen[t.ident] = t
                return list(seen.values())
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                self.filters = False  # an older kernel: test the bytes ourselves from now on
        return self._dump(socket.AF_UNSPEC, b"", only)

    def _filtered(self, packed: bytes) -> list[Tracked]:
        family = socket.AF_INET6 if len(packed) == 16 else socket.AF_INET
        src, dst = (CTA_IP_V6_SRC, CTA_IP_V6_DST) if family == socket.AF_INET6 else (CTA_IP_V4_SRC, CTA_IP_V4_DST)
        out: list[Tracked] = []
        for which, field, flag in ((CTA_TUPLE_ORIG, src, FILTER_IP_SRC), (CTA_TUPLE_ORIG, dst, FILTER_IP_DST),
                                   (CTA_TUPLE_REPLY, src, FILTER_IP_SRC)):
            tuple_attr = attr(which | NLA_F_NESTED, attr(CTA_TUPLE_IP | NLA_F_NESTED, attr(field, packed)))
            flags = attr(CTA_FILTER_ORIG_FLAGS if which == CTA_TUPLE_ORIG else CTA_FILTER_REPLY_FLAGS, struct.pack("=I", flag))
            out += self._dump(family, tuple_attr + attr(CTA_FILTER | NLA_F_NESTED, flags), None)
        return out

    def _dump(self, family: int, request: bytes, only: set[bytes] | None) -> list[Tracked]:
        out: list[Tracked] = []
        with self.nl.lock:
            self.nl.sock.send(self.nl.message((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP,
                                              struct.pack("=BBH", family, 0, 0) + request))
            seq = self.nl.seq
            while True:
                data = self.nl.sock.recv(1 << 17)
                off, done = 0, False
                while off + 16 <= len(data):
                    length, mtype, _, got_seq, _ = struct.unpack_from("=IHHII", data, off)
                    if length < 16:
                        raise OSError("ctnetlink: a malformed answer")
                    if got_seq == seq:
                        if mtype == NLMSG_DONE:
                            done = True
                        elif mtype == NLMSG_ERROR:
                            err = -struct.unpack_from("=i", data, off + 16)[0]
                            if err:
                                raise OSError(err, f"conntrack dump: {os.strerror(err)}")
                            done = True
                        elif mtype == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW and (
                                only is None or any(a in data[off + 20: off + length] for a in only)):
                            found = _tracked(data[off + 16: off + 20], attrs(data[off + 20: off + length]))
                            if found is not None:
                                out.append(found)
                    off += (length + 3) & ~3
                if done:
                    return out

    def delete(self, entry: Tracked) -> bool:
        """Remove this entry (its tuple and id: never another, never the whole table); False
        when it was gone already."""
        return self._change(IPCTNL_MSG_CT_DELETE, entry, attr(CTA_ID, entry.ident), "delete")

    def set_mark(self, entry: Tracked, bits: int) -> bool:
        """Set these bits of the entry's mark (the others stay); False when it was gone. (A
        NEW without NLM_F_CREATE changes the entry that has this tuple.)"""
        return self._change(IPCTNL_MSG_CT_NEW, entry, attr(CTA_MARK, struct.pack("!I", bits)) + attr(CTA_MARK_MASK, struct.pack("!I", bits)),
                            "mark")

    def _change(self, mtype: int, entry: Tracked, extra: bytes, what: str) -> bool:
        body = struct.pack("=BBH", entry.family, 0, 0) + attr(CTA_TUPLE_ORIG | NLA_F_NESTED, entry.tuple_orig) + extra
        with self.nl.lock:
            self.nl.sock.send(self.nl.message((NFNL_SUBSYS_CTNETLINK << 8) | mtype, NLM_F_REQUEST | NLM_F_ACK, body))
            for _, err in self.nl.acks({self.nl.seq}):
                if err == errno.ENOENT:
                    return False
                if err:
                    raise OSError(err, f"conntrack {what}: {os.strerror(err)}")
        return True

    def close(self) -> None:
        self.nl.close()


def _tracked(nfgen: bytes, a: dict[int, bytes]) -> Tracked | None:
    if CTA_TUPLE_ORIG not in a or CTA_ID not in a:
        return None
    conn = connection(a)
    mark = struct.unpack("!I", a[CTA_MARK][:4])[0] if CTA_MARK in a else 0
    tcp = attrs(attrs(a.get(CTA_PROTOINFO, b"")).get(CTA_PROTOINFO_TCP, b""))
    closed = tcp.get(CTA_PROTOINFO_TCP_STATE, b"\0")[0] in (TCP_CONNTRACK_TIME_WAIT, TCP_CONNTRACK_CLOSE)
    return None if conn is None else Tracked(conn, nfgen[0], a[CTA_TUPLE_ORIG], a[CTA_ID], mark, closed)
