"""The nftables ruleset generation: one netlink request, a few microseconds.

The kernel numbers every committed nftables transaction of a network namespace (any table,
anyone's): the generation moves by one per commit that changed something, and by nothing
otherwise (listings, counters, packets). So "the generation is the one at which we last saw
the kernel hold exactly our ruleset" proves nothing was changed since, without listing a
single rule or element: what lets a full resync of a 100k-element table, or the
every-second drift check, cost nothing on a quiet node (reconcile/syncer.py).

libnftables reads this number for its own cache but does not expose it, hence the raw
`NFT_MSG_GETGEN` here. The socket is opened at construction, so it belongs to the network
namespace the caller was in then (as libnftables' own socket does).
"""

from __future__ import annotations

import socket
import struct
import threading

from ..dataplane.rules import split_comment

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETGEN = 16
NFT_MSG_NEWGEN = 15
NFTA_GEN_ID = 1
NFT_MSG_NEWRULE = 6
NFT_MSG_GETRULE = 7
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_HANDLE, NFTA_RULE_USERDATA = 1, 2, 3, 7
NFTNL_UDATA_RULE_COMMENT = 0
NFPROTO_INET = 1
NLM_F_REQUEST = 1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
_NFGEN = struct.Struct("=BBH")  # nfgenmsg: family, version, resource id
_ATTR = struct.Struct("=HH")  # nlattr: length, type


class Generation:
    """Reads the generation of the network namespace this object was made in."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seq = 0
        self.sock: socket.socket | None = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        self.sock.settimeout(1.0)

    def read(self) -> int:
        """The current generation; OSError when the kernel does not answer as expected."""
        with self.lock:
            if self.sock is None:
                raise OSError("the generation socket is closed")
            self.seq += 1
            body = _NFGEN.pack(socket.AF_UNSPEC, 0, 0)
            msg_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN
            self.sock.send(_HEADER.pack(_HEADER.size + len(body), msg_type, NLM_F_REQUEST, self.seq, 0) + body)
            while True:
                data = self.sock.recv(4096)
                length, kind, _, seq, _ = _HEADER.unpack_from(data)
                if seq != self.seq:
                    continue  # an answer to an earlier request that timed out
                if kind == NLMSG_ERROR:
                    (errno,) = struct.unpack_from("=i", data, _HEADER.size)
                    raise OSError(-errno, "NFT_MSG_GETGEN refused")
                if kind != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN:
                    raise OSError(f"NFT_MSG_GETGEN: unexpected answer type {kind:#x}")
                return _gen_id(data[_HEADER.size + _NFGEN.size:length])

    def rule_handles(self, table: str, chain: str) -> dict[str, list[int]]:
        """The handles of an inet chain's rules by the rule id in each one's comment (rules
        without one under ""), in order: a dump of that one chain's rules (the kernel
        filters by table and chain; no set or element is read, unlike libnftables' `list
        chain`, which first reads every element of the table)."""
        with self.lock:
            if self.sock is None:
                raise OSError("the generation socket is closed")
            self.seq += 1
            attrs = _attr(NFTA_RULE_TABLE, table.encode() + b"\0") + _attr(NFTA_RULE_CHAIN, chain.encode() + b"\0")
            body = _NFGEN.pack(NFPROTO_INET, 0, 0) + attrs
            msg_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETRULE
            self.sock.send(_HEADER.pack(_HEADER.size + len(body), msg_type, NLM_F_REQUEST | NLM_F_DUMP, self.seq, 0) + body)
            handles: dict[str, list[int]] = {}
            while True:
                data = self.sock.recv(1 << 16)
                off = 0
                while off + _HEADER.size <= len(data):
                    length, kind, _, seq, _ = _HEADER.unpack_from(data, off)
                    if length < _HEADER.size:
                        raise OSError("NFT_MSG_GETRULE: a malformed answer")
                    msg = data[off:off + length]
                    off += (length + 3) & ~3
                    if seq != self.seq:
                        continue  # an answer to an earlier request that timed out
                    if kind == NLMSG_DONE:
                        return handles
                    if kind == NLMSG_ERROR:
                        (errno,) = struct.unpack_from("=i", msg, _HEADER.size)
                        if errno == 0:
                            continue
                        raise OSError(-errno, f"NFT_MSG_GETRULE {table}/{chain} refused")
                    if kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE:
                        attrs = msg[_HEADER.size + _NFGEN.size:]
                        rid = split_comment(_comment(attrs))[1]
                        handles.setdefault(rid, []).append(_u64(attrs, NFTA_RULE_HANDLE))

    def close(self) -> None:
        with self.lock:
            if self.sock is not None:
                self.sock.close()
                self.sock = None


def _gen_id(attrs: bytes) -> int:
    return _number(attrs, NFTA_GEN_ID, ">I", "NFT_MSG_GETGEN: the answer carries no generation")


def _attr(kind: int, payload: bytes) -> bytes:
    return _ATTR.pack(_ATTR.size + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)


def _u64(attrs: bytes, want: int) -> int:
    return _number(attrs, want, ">Q", f"netlink: the answer carries no attribute {want}")


def _attribute(attrs: bytes, want: int) -> bytes | None:
    """The value of attribute `want` in a run of netlink attributes (None: not there)."""
    off = 0
    while off + _ATTR.size <= len(attrs):
        alen, atype = _ATTR.unpack_from(attrs, off)
        if alen < _ATTR.size:
            break
        if atype & 0x3FFF == want:
            return attrs[off + _ATTR.size:off + alen]
        off += (alen + 3) & ~3
    return None


def _comment(attrs: bytes) -> str:
    """A rule's comment, from its user data (libnftnl's type-length-value records)."""
    udata = _attribute(attrs, NFTA_RULE_USERDATA) or b""
    off = 0
    while off + 2 <= len(udata):
        kind, length = udata[off], udata[off + 1]
        if kind == NFTNL_UDATA_RULE_COMMENT:
            return udata[off + 2:off + 2 + length].split(b"\0", 1)[0].decode(errors="replace")
        off += 2 + length
    return ""


def _number(attrs: bytes, want: int, fmt: str, missing: str) -> int:
    """The big-endian number of attribute `want` in a run of netlink attributes."""
    value = _attribute(attrs, want)
    if value is None or len(value) < struct.calcsize(fmt):
        raise OSError(missing)
    return int(struct.unpack_from(fmt, value)[0])
