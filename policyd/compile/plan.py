"""The compiled plan (IR): what the dataplane must enforce, with no nftables in it.

Peers are named by *set specs*: content-addressed descriptions of an address set. Equal
selectors in different policies give equal specs, hence one shared set.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ..model.objects import Action, Direction, IPAddress, IPBlock, IPNetwork, PodKey, PolicyKey, Tier
from ..model.selectors import LabelSelector, stable_hash


@dataclass(frozen=True)
class PodSetSpec:
    """Addresses of addressable pods matching (namespace scope, pod selector).

    Scope: `namespace` fixed (a podSelector-only peer), or `namespace_selector`.
    With `port_name`, members are (address, port) pairs: the pod's container port of
    that name and protocol, for egress rules whose named port resolves per destination.
    """

    pod_selector: LabelSelector
    namespace: str | None = None
    namespace_selector: LabelSelector | None = None
    port_name: str | None = None
    protocol: str | None = None

    def canonical(self) -> str:
        scope = f"ns={self.namespace}" if self.namespace is not None else f"nsSelector={self.namespace_selector.canonical()}"  # type: ignore[union-attr]
        text = f"pods {scope} podSelector={self.pod_selector.canonical()}"
        if self.port_name:
            text += f" port={self.protocol}/{self.port_name}"
        return text

    @property
    def digest(self) -> str:
        return stable_hash("pods", self.canonical())


@dataclass(frozen=True)
class BlockSetSpec:
    """An ipBlock: cidr minus except. Its content never changes: the spec *is* the content."""

    block: IPBlock

    def canonical(self) -> str:
        return f"ipBlock {self.block.canonical()}"

    @property
    def digest(self) -> str:
        return stable_hash("block", self.canonical())

    def intervals(self) -> list[IPNetwork]:
        """cidr minus excepts as a minimal list of prefixes."""
        nets: list[IPNetwork] = [self.block.cidr]
        for e in self.block.excepts:
            nxt: list[IPNetwork] = []
            for n in nets:
                if e.subnet_of(n):  # type: ignore[arg-type]
                    nxt.extend(n.address_exclude(e))  # type: ignore[arg-type]
                elif n.subnet_of(e):  # type: ignore[arg-type]
                    continue
                else:
                    nxt.append(n)
            nets = nxt
        collapsed: list[IPNetwork] = list(ipaddress.collapse_addresses(nets))  # type: ignore[type-var]  # one family: excepts match cidr's
        return sorted(collapsed, key=lambda n: (int(n.network_address), n.prefixlen))


@dataclass(frozen=True)
class NodeSetSpec:
    """Addresses of the Nodes whose labels match (a ClusterNetworkPolicy `nodes` peer): their
    InternalIP and ExternalIP addresses, either family."""

    node_selector: LabelSelector

    def canonical(self) -> str:
        return f"nodes nodeSelector={self.node_selector.canonical()}"

    @property
    def digest(self) -> str:
        return stable_hash("nodes", self.canonical())


@dataclass(frozen=True)
class DomainSetSpec:
    """The addresses a ClusterNetworkPolicy `domainNames` peer's names resolved to, in the DNS
    answers the policy's subject pods received: learned in the data path (names/), each
    address for as long as its record's TTL, never compiled. One set per policy, rule and
    peer: an address learned from one policy's pods admits only the pods that policy
    selects, and only to the names that peer lists."""

    policy: str
    rule_index: int
    peer_index: int
    names: tuple[str, ...]  # lower case, no final dot; `*.` wildcards (model/names.py)

    def canonical(self) -> str:
        return f"names of {self.policy} egress[{self.rule_index}] to[{self.peer_index}]: {','.join(self.names)}"

    @property
    def digest(self) -> str:
        return stable_hash("names", self.canonical())


SetSpec = PodSetSpec | BlockSetSpec | NodeSetSpec | DomainSetSpec


def set_kind(spec: SetSpec) -> str:
    """The short kind in a set's kernel name: `sel` pod addresses, `np` (address, port) of
    a named port, `blk` an ipBlock's prefixes, `nd` node addresses, `fq` addresses learned
    for domain names."""
    if isinstance(spec, BlockSetSpec):
        return "blk"
    if isinstance(spec, NodeSetSpec):
        return "nd"
    if isinstance(spec, DomainSetSpec):
        return "fq"
    return "np" if spec.port_name else "sel"


def has_ports(spec: SetSpec) -> bool:
    """Whether the set's members are (address, port) pairs (an egress named port)."""
    return isinstance(spec, PodSetSpec) and spec.port_name is not None

# Entries of a PodSetSpec: an address, or (address, port) when the spec has a port name.
NamedPortEntry = tuple[IPAddress, int]  # (a pod's address, its container port of that name)
Entry = IPAddress | NamedPortEntry


def addresses(entries: Iterable[Entry]) -> Iterator[IPAddress]:
    """The entries of a set without a port name."""
    return (e for e in entries if not isinstance(e, tuple))


def named_ports(entries: Iterable[Entry]) -> Iterator[NamedPortEntry]:
    """The entries of a set with a port name."""
    return (e for e in entries if isinstance(e, tuple))


@dataclass(frozen=True)
class PortMatch:
    """One `ports[index]` entry, resolved to a numeric range (None: the whole protocol)."""

    protocol: str
    first: int | None
    last: int | None
    index: int

    def matches(self, protocol: str, port: int) -> bool:
        if protocol != self.protocol:
            return False
        return self.first is None or self.first <= port <= self.last  # type: ignore[operator]


@dataclass(frozen=True)
class AllowRule:
    """One peer of one rule of one policy: `peer` None = every peer; `ports` None = every
    port of every protocol. When `peer` has a port name, the set holds (address, port)
    pairs and `ports` is None: the set itself decides the port."""

    policy: PolicyKey
    direction: Direction
    rule_index: int
    peer_index: int | None
    peer: SetSpec | None
    ports: tuple[PortMatch, ...] | None

    def label(self) -> str:
        """How a human finds the YAML this came from: `ns/policy ingress[0] from[1]`."""
        peers = "from" if self.direction is Direction.INGRESS else "to"
        text = f"{self.policy} {self.direction.value}[{self.rule_index}]"
        if self.peer_index is not None:
            text += f" {peers}[{self.peer_index}]"
        return text


@dataclass(frozen=True)
class TierRule:
    """One peer of one ClusterNetworkPolicy rule, with its action. `peer` None = every peer;
    `ports` None = all traffic (every protocol, ICMP included). `peer_index` None: the
    whole rule, denied as the API's fail-closed reading of a rule or policy it cannot
    enforce (`failed` says why)."""

    tier: Tier
    policy: str
    priority: int
    direction: Direction
    rule_index: int | None
    peer_index: int | None
    action: Action
    peer: SetSpec | None
    ports: tuple[PortMatch, ...] | None
    rule_name: str = ""
    failed: str = ""

    def label(self) -> str:
        """`Admin:deny-secrets egress[1] to[0] Deny` (the rule's free-text name is not here:
        it reaches no kernel comment)."""
        peers = "from" if self.direction is Direction.INGRESS else "to"
        where = f"{self.direction.value}[{self.rule_index}]" if self.rule_index is not None else self.direction.value
        if self.peer_index is not None:
            where += f" {peers}[{self.peer_index}]"
        return f"{self.tier.value}:{self.policy} {where} {self.action.value}"

    def describe(self) -> str:
        """For humans: `Admin ClusterNetworkPolicy deny-secrets, egress rule 1 'deny-all'`."""
        text = f"{self.tier.value} ClusterNetworkPolicy {self.policy}"
        if self.rule_index is not None:
            text += f", {self.direction.value} rule {self.rule_index}"
            if self.rule_name:
                text += f" {self.rule_name!r}"
        if self.failed:
            text += f" (fails closed: {self.failed})"
        return text


@dataclass(frozen=True)
class DirectionPlan:
    """One direction of one pod, tier by tier: the Admin tier's rules in order, then the
    NetworkPolicies that isolate the pod and the union of their allow rules, then the
    Baseline tier's rules in order. A pod no policy of any tier selects has no plan."""

    policies: tuple[PolicyKey, ...]
    rules: tuple[AllowRule, ...]
    # Policies that could not be interpreted: they isolate, and allow nothing.
    invalid: tuple[PolicyKey, ...] = ()
    admin: tuple[TierRule, ...] = ()
    baseline: tuple[TierRule, ...] = ()
    # Audit mode: NetworkPolicies that would isolate the pod here if they were enforced (only
    # where no enforced one does: otherwise they could only allow more), and their rules.
    audit: tuple[PolicyKey, ...] = ()
    audit_rules: tuple[AllowRule, ...] = ()

    @property
    def isolated(self) -> bool:
        """Isolated by NetworkPolicy: what the Admin tier leaves or passes, only their rules allow."""
        return bool(self.policies)


@dataclass(frozen=True)
class PodPlan:
    pod: PodKey
    ips: tuple[IPAddress, ...]
    ingress: DirectionPlan | None  # None: not isolated for ingress
    egress: DirectionPlan | None

    def direction(self, d: Direction) -> DirectionPlan | None:
        return self.ingress if d is Direction.INGRESS else self.egress

    def set_specs(self) -> set[SetSpec]:
        out: set[SetSpec] = set()
        for dp in (self.ingress, self.egress):
            if dp is not None:
                for rules in (dp.rules, dp.admin, dp.baseline, dp.audit_rules):
                    out.update(r.peer for r in rules if r.peer is not None)
        return out
