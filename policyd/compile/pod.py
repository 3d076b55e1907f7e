"""One local pod + the policies that select it → its PodPlan (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from ..model.objects import PROTOCOLS, Action, ClusterNetworkPolicy, CNPPeer, CNPRule, Direction, IPBlock, NetworkPolicy, Peer, Pod, PolicyPort, Tier
from ..model.selectors import MATCH_ALL
from .plan import AllowRule, BlockSetSpec, DirectionPlan, DomainSetSpec, NodeSetSpec, PodPlan, PodSetSpec, PortMatch, SetSpec, TierRule


def peer_spec(policy: NetworkPolicy, peer: Peer) -> PodSetSpec | BlockSetSpec:
    if peer.ip_block is not None:
        # "ipBlock ... CIDR minus except" — applies to any address, pod IPs included.
        return BlockSetSpec(peer.ip_block)
    pod_sel = peer.pod_selector if peer.pod_selector is not None else MATCH_ALL
    if peer.namespace_selector is None:
        # "podSelector alone: pods in the policy's own namespace"
        return PodSetSpec(pod_sel, namespace=policy.namespace)
    # "namespaceSelector (and podSelector): matching pods in matching namespaces"
    return PodSetSpec(pod_sel, namespace_selector=peer.namespace_selector)


def numeric_ports(ports: tuple[PolicyPort, ...], local: Pod | None) -> tuple[list[PortMatch], list[tuple[int, PolicyPort]]]:
    """Split ports into numeric matches and named ones still to resolve.

    Ingress named ports resolve here, against the local (destination) pod; a name that
    resolves nowhere "matches nothing" and is dropped. Egress names are returned."""
    matches: list[PortMatch] = []
    named: list[tuple[int, PolicyPort]] = []
    for i, p in enumerate(ports):
        if p.port is None:
            matches.append(PortMatch(p.protocol, None, None, i))
        elif isinstance(p.port, int):
            matches.append(PortMatch(p.protocol, p.port, p.end_port or p.port, i))
        elif local is not None:
            number = local.resolve_port(p.port, p.protocol)
            if number is not None:
                matches.append(PortMatch(p.protocol, number, number, i))
        else:
            named.append((i, p))
    return matches, named


def direction_rules(policy: NetworkPolicy, direction: Direction, pod: Pod) -> list[AllowRule]:
    rules: list[AllowRule] = []
    for ri, rule in enumerate(policy.rules(direction)):
        # For ingress the destination is this pod: its named ports resolve now.
        local = pod if direction is Direction.INGRESS else None
        matches, named = numeric_ports(rule.ports, local)
        # "If this field is empty or missing, this rule matches all ports";
        # a non-empty list whose entries all resolve nowhere matches nothing.
        port_matches = None if not rule.ports else tuple(matches)
        targets: list[tuple[int | None, Peer | None]] = (
            [(None, None)] if not rule.peers else list(enumerate(rule.peers))
        )
        for pi, peer in targets:
            spec = peer_spec(policy, peer) if peer is not None else None
            if port_matches is None or port_matches:
                rules.append(AllowRule(policy.key, direction, ri, pi, spec, port_matches))
            for _, np in named:
                # Egress named port: resolves against each destination pod, so the set
                # holds (address, port) pairs. An ipBlock peer cannot resolve a name.
                if isinstance(spec, BlockSetSpec):
                    continue
                base = spec if spec is not None else PodSetSpec(MATCH_ALL, namespace_selector=MATCH_ALL)
                named_spec = PodSetSpec(
                    base.pod_selector, base.namespace, base.namespace_selector, str(np.port), np.protocol
                )
                rules.append(AllowRule(policy.key, direction, ri, pi, named_spec, None))
    return rules


def cnp_peer_specs(peer: CNPPeer, cnp: ClusterNetworkPolicy | None = None, ri: int = 0, pi: int = 0) -> list[SetSpec]:
    """A ClusterNetworkPolicy peer's address sets (none for a peer policyd does not enforce)."""
    if peer.domain_names:
        # "DomainNames provides a way to specify domain names as peers": what they resolved to
        # for the policy's subject, learned from the answers (DomainSetSpec).
        return [DomainSetSpec(cnp.name if cnp is not None else "", ri, pi, peer.domain_names)]
    if peer.networks:
        # "Networks matches both regular IP traffic and ICMP traffic to/from the specified CIDRs."
        return [BlockSetSpec(IPBlock(net)) for net in peer.networks]
    if peer.node_selector is not None:
        # "Nodes defines a way to select a set of nodes in the cluster": their addresses.
        return [NodeSetSpec(peer.node_selector)]
    if peer.pod_selector is None or peer.namespace_selector is None:
        return []
    # "Pods defines a way to select a set of pods in a set of namespaces"; host-network pods
    # are in no address set (Pod.addressable).
    return [PodSetSpec(peer.pod_selector, namespace_selector=peer.namespace_selector)]


def cnp_rule_entries(cnp: ClusterNetworkPolicy, direction: Direction, ri: int, rule: CNPRule, pod: Pod) -> list[TierRule]:
    def entry(pi: int | None, peer: SetSpec | None, ports: tuple[PortMatch, ...] | None, action: Action = rule.action,
              failed: str = "") -> TierRule:
        return TierRule(cnp.tier, cnp.name, cnp.priority, direction, ri, pi, action, peer, ports, rule.name, failed)

    out: list[TierRule] = []
    # "If unspecified, protocol-specific attributes will not be used to match traffic."
    numeric: tuple[PortMatch, ...] | None = None
    named: list[tuple[int, str]] = []
    if rule.protocols:
        found: list[PortMatch] = []
        for i, p in enumerate(rule.protocols):
            if p.named_port is None:
                found.append(PortMatch(p.protocol or "TCP", p.first, p.last, i))
            elif direction is Direction.INGRESS:
                # The destination is this pod: "selects a destination port on a pod based on
                # the ContainerPort name", whatever its protocol.
                found += [PortMatch(cp.protocol, cp.port, cp.port, i) for cp in pod.ports if cp.name == p.named_port]
            else:
                named.append((i, p.named_port))
        numeric = tuple(found)
    unsupported = next((p.unsupported for p in rule.peers if p.unsupported is not None), None)
    if unsupported is not None and rule.action is not Action.ACCEPT:
        # "For "Accept" rules, "fail closed" means: "treat the rule as matching no traffic".
        # For "Deny" and "Pass" rules, "fail closed" means: "treat the rule as a 'Deny all'
        # rule"." (Accept: the peers policyd knows still match, the unknown one matches nothing.)
        return [entry(None, None, None, Action.DENY, f"{unsupported} are not supported")]
    for pi, peer in enumerate(rule.peers):
        if peer.unsupported is not None:
            continue
        for spec in cnp_peer_specs(peer, cnp, ri, pi):
            if numeric is None or numeric:
                out.append(entry(pi, spec, numeric))
            for _, name in named:
                assert isinstance(spec, PodSetSpec)  # validation refuses named ports with networks and nodes
                for proto in PROTOCOLS:  # the container port's own protocol decides
                    out.append(entry(pi, PodSetSpec(spec.pod_selector, None, spec.namespace_selector, name, proto), None))
    return out


def cnp_direction_rules(cnp: ClusterNetworkPolicy, direction: Direction, pod: Pod) -> list[TierRule]:
    if cnp.invalid:
        # A policy that failed validation denies all its subject's traffic, both ways.
        return [TierRule(cnp.tier, cnp.name, cnp.priority, direction, None, None, Action.DENY, None, None,
                         failed="the policy is invalid: " + "; ".join(cnp.invalid))]
    return [e for ri, r in enumerate(cnp.rules(direction)) for e in cnp_rule_entries(cnp, direction, ri, r, pod)]


def tier_rules(cnps: Sequence[ClusterNetworkPolicy], tier: Tier, direction: Direction, pod: Pod) -> tuple[TierRule, ...]:
    """A tier's rules in evaluation order: "Policies with lower priority values have higher
    precedence"; rules in written order. Equal priorities are ordered by name ("the
    implementation can apply any of the matching policies")."""
    ordered = sorted((c for c in cnps if c.tier is tier), key=lambda c: (c.priority, c.name))
    return tuple(r for c in ordered for r in cnp_direction_rules(c, direction, pod))


def plan_pod(pod: Pod, policies: list[NetworkPolicy], cluster_policies: Sequence[ClusterNetworkPolicy] = ()) -> PodPlan:
    """`policies` are those of the pod's namespace whose podSelector matches the pod;
    `cluster_policies` the ClusterNetworkPolicies whose subject is the pod."""
    dirs: dict[Direction, DirectionPlan | None] = {}
    for d in Direction:
        isolating = [p for p in policies if d in p.policy_types and not p.audit]
        # Audit mode never changes what is enforced: audited policies matter only where no
        # enforced one isolates (where one does, adding them could only allow more).
        auditing = [p for p in policies if d in p.policy_types and p.audit] if not isolating else []
        admin = tier_rules(cluster_policies, Tier.ADMIN, d, pod)
        baseline = tier_rules(cluster_policies, Tier.BASELINE, d, pod)
        if not isolating and not admin and not baseline and not auditing:
            dirs[d] = None  # "isolation in one direction does not touch the other"
            continue
        rules = [r for p in isolating for r in direction_rules(p, d, pod)]
        dirs[d] = DirectionPlan(
            policies=tuple(p.key for p in isolating),
            rules=tuple(rules),
            invalid=tuple(p.key for p in isolating if p.invalid),
            admin=admin,
            # "Further evaluation only happens for Pods not selected by a v1.NetworkPolicy."
            baseline=baseline if not isolating else (),
            audit=tuple(p.key for p in auditing),
            audit_rules=tuple(r for p in auditing for r in direction_rules(p, d, pod)),
        )
    return PodPlan(pod.key, pod.ips, dirs[Direction.INGRESS], dirs[Direction.EGRESS])
