"""Evaluate compiled plans for one connection: the verdict and the rule that decided it.

This is the engine's own reading of the plan — the same IR the renderer turns into
nftables — so `policyd explain`/`matrix` and the dataplane cannot disagree on semantics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..model.objects import Action, Direction, IPAddress, Pod
from .engine import Compiler
from .plan import AllowRule, BlockSetSpec, DirectionPlan, DomainSetSpec, Entry, PodSetSpec, SetSpec, TierRule, has_ports

# Whether the address was learned for a `domainNames` peer (from an answer to one of the
# policy's pods for one of the peer's names): the data path's knowledge, which the engine
# has only when told (`explain --name`). By default nothing is learned.
Learned = Callable[[DomainSetSpec, IPAddress], bool]


@dataclass(frozen=True)
class Endpoint:
    ip: IPAddress
    pod: Pod | None = None
    node: str | None = None  # the Node holding `ip` (InternalIP or ExternalIP), when not a pod's

    def __str__(self) -> str:
        if self.pod is not None:
            return self.pod.key
        return f"node {self.node}" if self.node is not None else str(self.ip)


@dataclass(frozen=True)
class SideVerdict:
    """One direction's check: egress of the source or ingress of the destination, tier by
    tier. `decided_by`: the ClusterNetworkPolicy rule that accepted or denied (Admin, or
    Baseline for pods no NetworkPolicy isolates); `passed_by`: an Admin Pass rule that
    handed the decision on; `allowed_by`: the NetworkPolicy rule that allowed."""

    direction: Direction
    endpoint: Endpoint
    plan: DirectionPlan | None  # None: no policy of any tier selects it in this direction
    allowed_by: AllowRule | None
    decided_by: TierRule | None = None
    passed_by: TierRule | None = None
    # Audit mode (never part of the verdict): the audited NetworkPolicies that would drop
    # this if they were enforced, or the rule of theirs that would allow it.
    audit_would_drop: tuple[str, ...] = ()
    audit_allowed_by: AllowRule | None = None

    @property
    def allowed(self) -> bool:
        if self.decided_by is not None:
            return self.decided_by.action is not Action.DENY
        if self.plan is None or not self.plan.isolated:
            return True  # "the default kubernetes policy ... all pods can communicate"
        return self.allowed_by is not None

    @property
    def tier(self) -> str:
        """Which tier decided: Admin, NetworkPolicy, Baseline, or none (allowed by default)."""
        if self.decided_by is not None:
            return self.decided_by.tier.value
        return "NetworkPolicy" if self.plan is not None and self.plan.isolated else "none"


@dataclass(frozen=True)
class Verdict:
    src: Endpoint
    dst: Endpoint
    protocol: str
    port: int | None
    egress: SideVerdict
    ingress: SideVerdict

    @property
    def allowed(self) -> bool:
        return self.egress.allowed and self.ingress.allowed


class Evaluator:
    def __init__(self, compiler: Compiler, learned: Learned | None = None) -> None:
        self.compiler = compiler
        self.learned: Learned = learned or (lambda spec, ip: False)
        self._entries: dict[SetSpec, frozenset[Entry]] = {}

    def _members(self, spec: SetSpec) -> frozenset[Entry]:
        got = self._entries.get(spec)
        if got is None:
            got = self._entries[spec] = self.compiler.set_entries(spec)
        return got

    def rule_matches(self, rule: AllowRule | TierRule, peer_ip: IPAddress, protocol: str, port: int | None) -> bool:
        spec = rule.peer
        if isinstance(spec, BlockSetSpec):
            if not spec.block.contains(peer_ip):
                return False
        elif isinstance(spec, DomainSetSpec):
            if not self.learned(spec, peer_ip):
                return False
        elif spec is not None:
            if has_ports(spec):
                assert isinstance(spec, PodSetSpec)
                # Egress named port: (destination address, its port of that name).
                return protocol == spec.protocol and port is not None and (peer_ip, port) in self._members(spec)
            if peer_ip not in self._members(spec):
                return False
        if rule.ports is None:
            return True
        return port is not None and any(m.matches(protocol, port) for m in rule.ports)

    def side(self, direction: Direction, endpoint: Endpoint, peer_ip: IPAddress, protocol: str, port: int | None) -> SideVerdict:
        plan = None
        if endpoint.pod is not None and endpoint.pod.key in self.compiler.plans:
            plan = self.compiler.plans[endpoint.pod.key].direction(direction)
        if plan is None:
            return SideVerdict(direction, endpoint, None, None)
        passed = None
        for r in plan.admin:
            if self.rule_matches(r, peer_ip, protocol, port):
                if r.action is Action.PASS:  # "Skips all further ClusterNetworkPolicy rules in the current tier"
                    passed = r
                    break
                return SideVerdict(direction, endpoint, plan, None, r)  # Accept or Deny: final
        if plan.isolated:  # "v1.NetworkPolicy always makes a final decision for selected pods"
            allowed_by = next((r for r in plan.rules if self.rule_matches(r, peer_ip, protocol, port)), None)
            return SideVerdict(direction, endpoint, plan, allowed_by, None, passed)
        # Audit mode, where NetworkPolicy would decide: what enforcing the audited ones would do.
        audit_allowed = next((r for r in plan.audit_rules if self.rule_matches(r, peer_ip, protocol, port)), None)
        would_drop = plan.audit if plan.audit and audit_allowed is None else ()
        for r in plan.baseline:
            if self.rule_matches(r, peer_ip, protocol, port):
                # Accept or Deny is final; a Pass here goes on to the default: allowed.
                return SideVerdict(direction, endpoint, plan, None, r, passed, would_drop, audit_allowed)
        return SideVerdict(direction, endpoint, plan, None, None, passed, would_drop, audit_allowed)

    def verdict(self, src: Endpoint, dst: Endpoint, protocol: str = "TCP", port: int | None = 80) -> Verdict:
        if protocol == "ICMP":
            port = None
        egress = self.side(Direction.EGRESS, src, dst.ip, protocol, port)
        ingress = self.side(Direction.INGRESS, dst, src.ip, protocol, port)
        return Verdict(src, dst, protocol, port, egress, ingress)
