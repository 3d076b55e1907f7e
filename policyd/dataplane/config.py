"""What every backend is configured with, and the facts about specs they all share."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from ..compile.plan import BlockSetSpec, SetSpec
from .droplog import DropLog

IFNAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,15}$")
FAMILIES = (4, 6)


class DispatchMode(str, Enum):
    INTERFACE = "interface"  # routed CNIs: host-side veth per pod (cali*, lxc*, …)
    ADDRESS = "address"  # bridging CNIs: br_netfilter shows the bridge, so use pod addresses


@dataclass(frozen=True)
class Fqdn:
    """ClusterNetworkPolicy `domainNames`: the DNS answers to local pods a domainNames rule
    selects go through NFQUEUE `queue` to the agent, which learns their addresses before it
    lets them pass. `fail_open`: when no agent listens, or its queue is full, answers pass
    unlearned (connections to their addresses stay denied until the next lookup the agent
    sees); else they are dropped (the pod's lookups time out)."""

    queue: int = 53
    fail_open: bool = True


# One bit of the connection mark: connections a policy change revoked (reconcile/revoke.py;
# policyd run --revoke-mark, chart revokeConnections.ctMark).
DEFAULT_REVOKE_MARK = 0x02000000


@dataclass(frozen=True)
class RenderConfig:
    """`table` names what policyd owns: the nftables table, or the prefix of iptables chains
    and ipsets."""

    table: str = "policyd"
    mode: DispatchMode = DispatchMode.INTERFACE
    priority: int = 0
    anti_spoof: bool = True
    # Fail-closed (interface mode): traffic on an interface with one of these prefixes that
    # is not a programmed local pod's is dropped. Empty: fail-open.
    closed_prefixes: tuple[str, ...] = ()
    # Log the pod chains' drops through NFLOG (droplog.py); None: no log rules at all.
    drop_log: DropLog | None = None
    # Count packets and bytes on every accepting and dropping rule of the pod chains
    # (observe/counters.py reads them; iptables counts every rule anyway).
    counters: bool = False
    # Learn domainNames peers' addresses from DNS answers (names/); None: nothing is learned,
    # so a domainNames peer matches nothing (never wider).
    fqdn: Fqdn | None = None
    # The conntrack mark bit(s) of connections a policy change revoked (reconcile/revoke.py):
    # their packets are dropped before the base chains accept established traffic. None: no
    # such rule (connections outlive the access that admitted them).
    revoke_mark: int | None = None

    @property
    def tracks_ifaces(self) -> bool:
        """Whether the `pod-ifaces` set (interfaces of programmed local pods) exists."""
        return self.mode is DispatchMode.INTERFACE and (self.anti_spoof or bool(self.closed_prefixes))


def valid_ifname(name: str | None) -> bool:
    return name is not None and bool(IFNAME_RE.match(name))


def family_sets(spec: SetSpec) -> list[int]:
    """The address families a spec needs a set for (an ipBlock has one, selectors both)."""
    if isinstance(spec, BlockSetSpec):
        return [spec.block.cidr.version]
    return list(FAMILIES)
