"""Frozen value types for the three kinds policyd reads (only the fields it uses)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import Enum
from typing import NewType

from .selectors import LabelSelector

PodKey = NewType("PodKey", str)  # "namespace/name"
PolicyKey = NewType("PolicyKey", str)  # "namespace/name"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

PROTOCOLS = ("TCP", "UDP", "SCTP")


class Direction(str, Enum):
    INGRESS = "ingress"
    EGRESS = "egress"


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: dict[str, str] = field(default_factory=dict, hash=False, compare=True)


@dataclass(frozen=True)
class ContainerPort:
    port: int
    protocol: str = "TCP"
    name: str | None = None


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    labels: dict[str, str] = field(default_factory=dict, hash=False)
    node: str | None = None
    ips: tuple[IPAddress, ...] = ()
    ports: tuple[ContainerPort, ...] = ()
    host_network: bool = False
    phase: str = "Running"

    @property
    def key(self) -> PodKey:
        return PodKey(f"{self.namespace}/{self.name}")

    @property
    def addressable(self) -> bool:
        """Pods that take part in address sets and get chains.

        "Pods without an IP, and pods that finished (Succeeded/Failed), are in no address set";
        host-network pods are never selected (their address is the node's).
        """
        return bool(self.ips) and not self.host_network and self.phase not in ("Succeeded", "Failed")

    def resolve_port(self, name: str, protocol: str) -> int | None:
        """A named port resolves against this pod's container ports (name and protocol)."""
        for p in self.ports:
            if p.name == name and p.protocol == protocol:
                return p.port
        return None


@dataclass(frozen=True)
class IPBlock:
    cidr: IPNetwork
    excepts: tuple[IPNetwork, ...] = ()

    def contains(self, ip: IPAddress) -> bool:
        return (
            ip.version == self.cidr.version
            and ip in self.cidr
            and not any(ip in e for e in self.excepts)
        )

    def canonical(self) -> str:
        return str(self.cidr) + "".join(f" except {e}" for e in self.excepts)


@dataclass(frozen=True)
class Peer:
    """One `from`/`to` entry: either an ipBlock or a (namespace, pod) selector pair.

    namespace_selector None means "the policy's own namespace" (podSelector alone).
    """

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None


@dataclass(frozen=True)
class PolicyPort:
    protocol: str = "TCP"
    port: int | str | None = None  # None: every port of the protocol
    end_port: int | None = None


@dataclass(frozen=True)
class PolicyRule:
    """peers None/empty: every peer; ports empty: every port."""

    peers: tuple[Peer, ...] = ()
    ports: tuple[PolicyPort, ...] = ()


@dataclass(frozen=True)
class NetworkPolicy:
    namespace: str
    name: str
    pod_selector: LabelSelector
    ingress: tuple[PolicyRule, ...] = ()
    egress: tuple[PolicyRule, ...] = ()
    policy_types: frozenset[Direction] = frozenset({Direction.INGRESS})
    # A policy that failed validation: it isolates what it selects and allows nothing.
    invalid: tuple[str, ...] = ()
    # How a live object was read where today's validation would refuse it but an older API
    # server stored it (e.g. host bits in an ipBlock CIDR): enforced as read, and reported.
    notes: tuple[str, ...] = ()

    @property
    def key(self) -> PolicyKey:
        return PolicyKey(f"{self.namespace}/{self.name}")

    def rules(self, direction: Direction) -> tuple[PolicyRule, ...]:
        if self.invalid:
            return ()
        return self.ingress if direction is Direction.INGRESS else self.egress


@dataclass(frozen=True)
class Node:
    name: str
    pod_cidrs: tuple[IPNetwork, ...] = ()


# Every kind policyd reads.
KubeObject = Namespace | Pod | NetworkPolicy | Node
