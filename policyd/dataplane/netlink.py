"""What the backends' raw netfilter netlink requests share (effectful: a socket): the
attribute encoding, and a socket bound in the network namespace it was made in that numbers
its messages and waits for the kernel's answer to each one that asked for an ack (nft/raw.py:
nf_tables batches; ipt/ipset.py: ipset requests)."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

NETLINK_NETFILTER = 12
NLMSG_ERROR = 2
NLA_F_NESTED = 0x8000
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port


def attr(kind: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)


def nested(kind: int, *parts: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(parts))


def cstr(text: str) -> bytes:
    return text.encode() + b"\0"


class NetfilterSocket:
    """One request (or batch) at a time: hold `lock` around `message`s, their send and `acks`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seq = 0
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        self.sock.settimeout(2.0)

    def message(self, mtype: int, flags: int, body: bytes) -> bytes:
        """A message with the next sequence number (`self.seq` after the call)."""
        self.seq += 1
        return HEADER.pack(HEADER.size + len(body), mtype, flags, self.seq, 0) + body

    def acks(self, waiting: set[int]) -> Iterator[tuple[int, int]]:
        """(sequence number, errno: 0 for success) of each answer to `waiting`, until all came."""
        waiting = set(waiting)
        while waiting:
            data = self.sock.recv(65536)
            off = 0
            while off + HEADER.size <= len(data):
                length, mtype, _, seq, _ = HEADER.unpack_from(data, off)
                if length < HEADER.size:
                    raise OSError("netfilter netlink: a malformed answer")
                if mtype == NLMSG_ERROR and seq in waiting:
                    waiting.discard(seq)
                    yield seq, -struct.unpack_from("=i", data, off + HEADER.size)[0]
                off += (length + 3) & ~3

    def close(self) -> None:
        self.sock.close()
