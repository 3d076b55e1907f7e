"""Which host-side interface leads to a pod: read from this namespace's host routes.

Routed CNIs (Calico, Cilium, the lab) install a /32 (/128) route per pod through its
host-side veth. Reading /proc is cheap and needs no subprocess; the table is re-read only
when a pod's interface is not known yet.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterable

from ..model.objects import IPAddress


def host_routes() -> dict[str, str]:
    """address → interface, for /32 and /128 routes of this network namespace."""
    out: dict[str, str] = {}
    try:
        with open("/proc/thread-self/net/route") as f:
            next(f)
            for line in f:
                fields = line.split()
                if len(fields) >= 8 and fields[7] == "FFFFFFFF":
                    addr = socket.inet_ntoa(struct.pack("<L", int(fields[1], 16)))
                    out[addr] = fields[0]
    except OSError:
        pass
    try:
        with open("/proc/thread-self/net/ipv6_route") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 10 and fields[1] == "80":
                    out[str(ipaddress.IPv6Address(bytes.fromhex(fields[0])))] = fields[9]
    except OSError:
        pass
    return out


class RouteInterfaces:
    """Caches the route table; `refresh()` when a lookup misses."""

    def __init__(self) -> None:
        self.routes: dict[str, str] = {}

    def refresh(self) -> None:
        self.routes = host_routes()

    def __call__(self, pod_key: str, ips: Iterable[IPAddress]) -> str | None:
        for ip in ips:
            dev = self.routes.get(str(ip))
            if dev is not None:
                return dev
        return None
