"""What the netfilter netlink readers share (NFLOG, conntrack events): the attribute walk,
and a socket that hands over one datagram at a time, counting the times the kernel had to
drop messages because the socket's buffer was full (ENOBUFS) instead of failing."""

from __future__ import annotations

import errno
import socket
import struct
from typing import Self

NETLINK_NETFILTER = 12


def messages(data: bytes, kind: int) -> list[dict[int, bytes]]:
    """The attributes of every nfnetlink message of type `kind` in one datagram (each after
    its nlmsghdr, 16 bytes, and nfgenmsg, 4); others are skipped."""
    out = []
    i = 0
    while i + 16 <= len(data):
        length, got = struct.unpack_from("=IH", data, i)
        if length < 16:
            break
        if got == kind:
            out.append(attrs(data[i + 20: i + length]))
        i += (length + 3) & ~3
    return out


def attrs(data: bytes) -> dict[int, bytes]:
    """A run of netlink attributes by type (without NLA_F_NESTED / NLA_F_NET_BYTEORDER)."""
    out = {}
    i = 0
    while i + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, i)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[i + 4: i + length]
        i += (length + 3) & ~3
    return out


class Subscription:
    def __init__(self, rcvbuf: int, groups: int = 0) -> None:
        self.overruns = 0
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.bind((0, groups))
        except BaseException:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def datagram(self, timeout: float | None) -> bytes:
        """The next datagram, or b"" when none came within `timeout` or the kernel reported
        an overrun (counted)."""
        if timeout != self.sock.gettimeout():  # a change costs system calls: not one per message
            self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1 << 17)
        except TimeoutError:
            return b""
        except OSError as e:
            if e.errno == errno.ENOBUFS:
                self.overruns += 1
                return b""
            raise

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
