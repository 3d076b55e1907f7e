"""One local pod + the policies that select it → its PodPlan (pure)."""

from __future__ import annotations

from ..model.objects import Direction, NetworkPolicy, Peer, Pod, PolicyPort
from ..model.selectors import MATCH_ALL
from .plan import AllowRule, BlockSetSpec, DirectionPlan, PodPlan, PodSetSpec, PortMatch, SetSpec


def peer_spec(policy: NetworkPolicy, peer: Peer) -> SetSpec:
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


def plan_pod(pod: Pod, policies: list[NetworkPolicy]) -> PodPlan:
    """`policies` are those of the pod's namespace whose podSelector matches the pod."""
    dirs: dict[Direction, DirectionPlan | None] = {}
    for d in Direction:
        isolating = [p for p in policies if d in p.policy_types]
        if not isolating:
            dirs[d] = None  # "isolation in one direction does not touch the other"
            continue
        rules = [r for p in isolating for r in direction_rules(p, d, pod)]
        dirs[d] = DirectionPlan(
            policies=tuple(p.key for p in isolating),
            rules=tuple(rules),
            invalid=tuple(p.key for p in isolating if p.invalid),
        )
    return PodPlan(pod.key, pod.ips, dirs[Direction.INGRESS], dirs[Direction.EGRESS])
