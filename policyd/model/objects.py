"""Frozen value types for the three kinds policyd reads (only the fields it uses)."""

from __future__ import annotations

import ipaddress
import sys
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


@dataclass(frozen=True, slots=True)
class ContainerPort:
    port: int
    protocol: str = "TCP"
    name: str | None = None


@dataclass(frozen=True, slots=True)  # no per-object __dict__: 100k pods are held on every node
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
        # Interned: every index and map that holds the key shares one string, not a copy each.
        return PodKey(sys.intern(f"{self.namespace}/{self.name}"))

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


# policyd's own annotation on a NetworkPolicy: "true" puts it in audit mode (never enforced).
AUDIT_ANNOTATION = "policyd.io/audit"


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
    # Audit mode (annotation AUDIT_ANNOTATION: "true"): not enforced; what it would drop, of
    # what nothing enforced drops, is logged (dataplane/droplog.py).
    audit: bool = False

    @property
    def key(self) -> PolicyKey:
        return PolicyKey(f"{self.namespace}/{self.name}")

    def rules(self, direction: Direction) -> tuple[PolicyRule, ...]:
        if self.invalid:
            return ()
        return self.ingress if direction is Direction.INGRESS else self.egress


@dataclass(frozen=True)
class Node:
    """A Node: its pod CIDRs (the what-if tools' addressing), its labels and the addresses
    a ClusterNetworkPolicy `nodes` peer matches (status.addresses of type InternalIP and
    ExternalIP, either family)."""

    name: str
    pod_cidrs: tuple[IPNetwork, ...] = ()
    labels: dict[str, str] = field(default_factory=dict, hash=False, compare=True)
    addresses: tuple[IPAddress, ...] = ()


class Tier(str, Enum):
    """A ClusterNetworkPolicy's tier: Admin before NetworkPolicy, Baseline after it."""

    ADMIN = "Admin"
    BASELINE = "Baseline"


class Action(str, Enum):
    """What a ClusterNetworkPolicy rule does with the traffic it matches."""

    ACCEPT = "Accept"  # final for this direction (the other direction still applies)
    DENY = "Deny"  # final: dropped
    PASS = "Pass"  # skip the rest of this tier


@dataclass(frozen=True)
class CNPPeer:
    """One `from`/`to` entry of a ClusterNetworkPolicy rule: pods (namespace AND pod
    selector; `namespaces` is the pod selector that matches everything), or networks.
    `node_selector`: a `nodes` peer (egress only): the addresses of the Nodes it selects.
    `domain_names`: a `domainNames` peer (egress, Admin Accept rules): the addresses the
    names resolved to in the answers the subject's pods received (model/names.py; lower
    case, no final dot). `unsupported` names a peer policyd does not enforce (one with no
    field it knows, or domainNames where the API does not support them): the rule then
    fails closed as the API documents."""

    namespace_selector: LabelSelector | None = None
    pod_selector: LabelSelector | None = None
    networks: tuple[IPNetwork, ...] = ()
    node_selector: LabelSelector | None = None
    unsupported: str | None = None
    domain_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.namespace_selector is not None and self.pod_selector is None:  # a `namespaces` peer: all their pods
            object.__setattr__(self, "pod_selector", LabelSelector())
        if self.pod_selector is not None and self.namespace_selector is None:
            raise ValueError("a pods peer needs its namespace selector (the API requires namespaceSelector)")


@dataclass(frozen=True)
class CNPPort:
    """One `protocols[]` entry: a protocol with a port or range, or a destination named port
    (any protocol: the container port's own). A single port is the range first..first."""

    protocol: str | None
    first: int | None = None
    last: int | None = None
    named_port: str | None = None

    def __post_init__(self) -> None:
        if self.first is not None and self.last is None:  # CNPPort("TCP", 80): one port, never "80 to anything"
            object.__setattr__(self, "last", self.first)


@dataclass(frozen=True)
class CNPRule:
    """protocols empty: every protocol and port (ICMP included)."""

    action: Action
    peers: tuple[CNPPeer, ...]
    protocols: tuple[CNPPort, ...] = ()
    name: str = ""


@dataclass(frozen=True)
class ClusterNetworkPolicy:
    """policy.networking.k8s.io ClusterNetworkPolicy. The subject is pods whose namespace
    matches `namespace_selector` and whose labels match `pod_selector` (`subject.namespaces`
    is the pod selector matching everything); host-network pods are never subjects."""

    name: str
    tier: Tier
    priority: int
    namespace_selector: LabelSelector
    pod_selector: LabelSelector
    ingress: tuple[CNPRule, ...] = ()
    egress: tuple[CNPRule, ...] = ()
    # Failed validation: it denies all traffic of its subject, both ways, at its tier and
    # priority (as the API's "fail closed" for rules it cannot read).
    invalid: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return self.name

    def rules(self, direction: Direction) -> tuple[CNPRule, ...]:
        return self.ingress if direction is Direction.INGRESS else self.egress


# Every kind policyd reads.
KubeObject = Namespace | Pod | NetworkPolicy | ClusterNetworkPolicy | Node
