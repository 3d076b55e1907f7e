"""Which host-side interface leads to a pod: read from this namespace's host routes.

Routed CNIs (Calico, Cilium, the lab) install a /32 (/128) route per pod through its
host-side veth. Reading /proc is cheap and needs no subprocess; the table is re-read only
when a pod's interface is not known yet.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
from collections.abc import Iterable

from ..model.objects import IPAddress

log = logging.getLogger("policyd.interfaces")


def host_routes() -> dict[str, str]:
    """address → interface, for /32 and /128 routes of this network namespace."""
    out: dict[str, str] = {}
    try:
        with open(ROUTES[4]) as f:
            next(f)
            for line in f:
                fields = line.split()
                if len(fields) >= 8 and fields[7] == "FFFFFFFF":
                    addr = socket.inet_ntoa(struct.pack("<L", int(fields[1], 16)))
                    out[addr] = fields[0]
    except OSError as e:
        _unreadable(ROUTES[4], e)
    try:
        with open(ROUTES[6]) as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 10 and fields[1] == "80":
                    out[str(ipaddress.IPv6Address(bytes.fromhex(fields[0])))] = fields[9]
    except FileNotFoundError:
        pass  # IPv6 is off in this kernel or namespace: no IPv6 routes to find
    except OSError as e:
        _unreadable(ROUTES[6], e)
    return out


ROUTES = {4: "/proc/thread-self/net/route", 6: "/proc/thread-self/net/ipv6_route"}
_said: set[tuple[str, int | None]] = set()


def _unreadable(path: str, e: OSError) -> None:
    """Said once per path and error: local pods whose interface is found there wait
    (pending_interfaces), and the log must say why."""
    if (path, e.errno) not in _said:
        _said.add((path, e.errno))
        log.warning("cannot read %s (%s): local pods whose host interface is found through it stay pending", path, e)


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
