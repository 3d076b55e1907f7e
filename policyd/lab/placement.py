"""The lab's scheduler and IPAM for a pod created after `lab up` (at `up`, the model's
`allocate` places every pod at once; both give the lowest free address from .2)."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from ..model.addressing import first_free
from ..model.objects import IPAddress, Pod
from .families import addresses, node_cidrs, slot_of, v4_for
from .records import LabError, LabRecord


def served_ports(pod: Pod) -> tuple[list[int], list[int], list[int]]:
    """The TCP, UDP and SCTP ports the pod's process serves (its container ports)."""
    by = {proto: sorted({p.port for p in pod.ports if p.protocol == proto}) for proto in ("TCP", "UDP", "SCTP")}
    return by["TCP"], by["UDP"], by["SCTP"]


def place(rec: LabRecord, pod: Pod) -> Pod:
    """spec.nodeName or the least-loaded node; status.podIPs (inside that node's pod CIDR,
    unused) or the lowest free address, in the lab's IP families (`families`)."""
    if pod.node and pod.node not in rec.nodes:
        raise LabError(f"pod {pod.key}: spec.nodeName {pod.node!r} is not a lab node ({', '.join(sorted(rec.nodes))})")
    load = dict.fromkeys(rec.nodes, 0)
    for p in rec.pods.values():
        load[p.node] = load.get(p.node, 0) + 1
    node = pod.node or min(sorted(rec.nodes), key=lambda n: load[n])
    net = ipaddress.IPv4Network(rec.nodes[node].cidr)
    family = rec.ip_family
    ranges = ", ".join(node_cidrs(net, family))
    if family == "ipv4":
        used: set[IPAddress] = {ipaddress.ip_address(i) for p in rec.pods.values() for i in p.ips}
        explicit = pod.ips
    else:
        used = {s for p in rec.pods.values() for s in slots(p.ips)}
        slot = slot_of(pod.key, pod.ips, family)
        explicit = (slot,) if slot is not None else ()
    if explicit:
        bad = [str(i) for i in explicit if i not in net or i in used]
        if bad:
            raise LabError(f"pod {pod.key}: status.podIPs {', '.join(map(str, pod.ips))} outside {node}'s pod CIDR {ranges} or in use")
        return replace(pod, node=node, ips=pod.ips if family == "ipv4" else addresses(explicit[0], family))
    ip = first_free(net, used)
    if ip is None:
        raise LabError(f"pod {pod.key}: {node}'s pod CIDR {ranges} has no free address left")
    return replace(pod, node=node, ips=addresses(ip, family))


def slots(ips: list[str]) -> set[IPAddress]:
    """The IPv4 slots a recorded pod's addresses take (an IPv6 address, its mirror's)."""
    out: set[IPAddress] = set()
    for text in ips:
        a = ipaddress.ip_address(text)
        s = a if isinstance(a, ipaddress.IPv4Address) else v4_for(a)
        if s is not None:
            out.add(s)
    return out
