"""ipset through its netlink protocol (effectful): learned addresses added with a timeout and
removed, one request each, answered by the kernel's ack: at the rate DNS answers come, where
the `ipset` tool would cost a process each (linux/netfilter/ipset/ip_set.h)."""

from __future__ import annotations

import errno as errnos
import ipaddress
import socket
import struct

from ..dataplane.netlink import NLM_F_ACK, NLM_F_REQUEST, NetfilterSocket, attr, nested

NFNL_SUBSYS_IPSET = 6
IPSET_PROTOCOL = 7
IPSET_CMD_ADD, IPSET_CMD_DEL = 9, 10
IPSET_ATTR_PROTOCOL, IPSET_ATTR_SETNAME, IPSET_ATTR_DATA = 1, 2, 7
IPSET_ATTR_IP, IPSET_ATTR_TIMEOUT = 1, 6
IPSET_ATTR_IPADDR_IPV4, IPSET_ATTR_IPADDR_IPV6 = 1, 2
IPSET_ERR_EXIST = 4103  # IPSET_ERR_PRIVATE + 7: what a delete of an element not there answers
NLA_F_NET_BYTEORDER = 0x4000


class IpsetNetlink(NetfilterSocket):
    """ipset requests through a netfilter netlink socket of the namespace it was made in."""

    def _request(self, cmd: int, name: str, address: str, timeout: float | None) -> None:
        ip = ipaddress.ip_address(address)
        family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        kind = IPSET_ATTR_IPADDR_IPV4 if ip.version == 4 else IPSET_ATTR_IPADDR_IPV6
        data = nested(IPSET_ATTR_IP, attr(kind | NLA_F_NET_BYTEORDER, ip.packed))
        if timeout is not None:
            data += attr(IPSET_ATTR_TIMEOUT | NLA_F_NET_BYTEORDER, struct.pack("!I", max(1, int(timeout))))
        body = (struct.pack("=BBH", family, 0, 0) + attr(IPSET_ATTR_PROTOCOL, struct.pack("=B", IPSET_PROTOCOL))
                + attr(IPSET_ATTR_SETNAME, name.encode() + b"\0") + nested(IPSET_ATTR_DATA, data))
        # No NLM_F_EXCL: adding an address already there refreshes its timeout (ipset -exist).
        self.sock.send(self.message((NFNL_SUBSYS_IPSET << 8) | cmd, NLM_F_REQUEST | NLM_F_ACK, body))
        for _, code in self.acks({self.seq}):
            if code and not (cmd == IPSET_CMD_DEL and code == IPSET_ERR_EXIST):
                raise OSError(code, f"ipset {name} refused {address}: {errnos.errorcode.get(code, code)}")

    def add(self, entries: dict[str, list[tuple[str, float]]]) -> None:
        with self.lock:
            for name, items in entries.items():
                for address, seconds in items:
                    self._request(IPSET_CMD_ADD, name, address, seconds)

    def delete(self, entries: dict[str, list[str]]) -> None:
        with self.lock:
            for name, items in entries.items():
                for address in items:
                    self._request(IPSET_CMD_DEL, name, address, None)

