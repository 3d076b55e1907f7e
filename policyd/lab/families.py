"""The lab's IP families (`lab up --ip-family ipv4|ipv6|dual`) and how pod addresses
follow from them.

The lab allocates every pod an IPv4 *slot* in its node's pod CIDR (the lowest free
address from .2, as `model.addressing` does); the family decides which addresses the pod
gets for that slot: the IPv4 address, its IPv6 mirror (10.244.1.7 → fd00:10:244:1::7), or
both, IPv4 first (the primary family's order, as a dual-stack kubelet reports them). Each
node's IPv6 pod range is the /64 that mirrors its IPv4 /24, so IPv6 labs need
`--node-prefix 24` and an IPv4 `--cluster-cidr`.
"""

from __future__ import annotations

import ipaddress

from ..model.objects import IPAddress
from .records import LabError

FAMILIES = ("ipv4", "ipv6", "dual")
VERSIONS = {"ipv4": (4,), "ipv6": (6,), "dual": (4, 6)}


def v6_for(ip4: ipaddress.IPv4Address) -> ipaddress.IPv6Address:
    """An IPv4 address's IPv6 mirror: 10.244.1.7 → fd00:10:244:1::7."""
    a, b, c, d = ip4.packed
    return ipaddress.IPv6Address(f"fd00:{a}:{b}:{c}::{d}")


def v4_for(ip6: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one mirrors, or None when it mirrors none (the mirror
    writes each decimal octet as a hexadecimal group's digits: 244 → :244:)."""
    groups = [format(int.from_bytes(ip6.packed[i:i + 2], "big"), "x") for i in range(0, 16, 2)]
    octets = [groups[1], groups[2], groups[3], groups[7]]
    if groups[0] != "fd00" or groups[4:7] != ["0", "0", "0"] or not all(g.isdigit() and int(g) < 256 for g in octets):
        return None
    return ipaddress.IPv4Address(".".join(str(int(g)) for g in octets))


def node_v6(cidr4: ipaddress.IPv4Network) -> ipaddress.IPv6Network:
    """The /64 that mirrors a node's IPv4 /24."""
    return ipaddress.IPv6Network(f"{v6_for(cidr4.network_address)}/64")


def check(family: str, cluster_cidr: str, node_prefix: int) -> None:
    """What an IPv6 lab needs of --cluster-cidr and --node-prefix (LabError saying why)."""
    if family not in FAMILIES:
        raise LabError(f"--ip-family {family!r}: one of {', '.join(FAMILIES)}")
    if family == "ipv4":
        return
    why = "IPv6 pod addresses mirror IPv4 ones (10.244.1.7 → fd00:10:244:1::7), one /64 per node's /24"
    if ipaddress.ip_network(cluster_cidr).version != 4:
        raise LabError(f"--cluster-cidr {cluster_cidr}: the lab's IPv6 ranges follow from an IPv4 --cluster-cidr ({why})")
    if node_prefix != 24:
        raise LabError(f"--node-prefix {node_prefix}: --ip-family {family} needs 24 ({why})")


def node_cidrs(cidr4: ipaddress.IPv4Network, family: str) -> list[str]:
    """A node's spec.podCIDRs in the lab's family order."""
    return [str(cidr4) if v == 4 else str(node_v6(cidr4)) for v in VERSIONS[family]]


def addresses(slot: IPAddress, family: str) -> tuple[IPAddress, ...]:
    """A pod's status.podIPs for its IPv4 slot."""
    assert isinstance(slot, ipaddress.IPv4Address)
    return tuple(slot if v == 4 else v6_for(slot) for v in VERSIONS[family])


def slot_of(key: str, ips: tuple[IPAddress, ...], family: str) -> IPAddress | None:
    """The IPv4 slot that a pod's explicit status.podIPs name in an IPv6 or dual lab (None
    when it gives none). They must be of the lab's families and agree on one slot."""
    if not ips:
        return None
    wrong = [str(i) for i in ips if i.version not in VERSIONS[family]]
    if wrong:
        raise LabError(f"pod {key}: status.podIPs {', '.join(wrong)} not of the lab's --ip-family {family}")
    slots = {i if isinstance(i, ipaddress.IPv4Address) else v4_for(i) for i in ips}
    if None in slots or len(slots) != 1:
        raise LabError(f"pod {key}: status.podIPs {', '.join(map(str, ips))}: in an IPv6 or dual lab a pod's addresses are "
                       "an IPv4 address of its node's range and its mirror fd00:A:B:C::D (10.244.1.7 and fd00:10:244:1::7)")
    return slots.pop()

