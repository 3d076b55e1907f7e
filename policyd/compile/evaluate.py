"""Evaluate compiled plans for one connection: the verdict and the rule that decided it.

This is the engine's own reading of the plan — the same IR the renderer turns into
nftables — so `policyd explain`/`matrix` and the dataplane cannot disagree on semantics.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..model.objects import Direction, IPAddress, Pod
from .engine import Compiler
from .plan import AllowRule, BlockSetSpec, DirectionPlan, Entry, SetSpec


@dataclass(frozen=True)
class Endpoint:
    ip: IPAddress
    pod: Pod | None = None

    def __str__(self) -> str:
        return self.pod.key if self.pod is not None else str(self.ip)


@dataclass(frozen=True)
class SideVerdict:
    """One direction's check: egress of the source or ingress of the destination."""

    direction: Direction
    endpoint: Endpoint
    plan: DirectionPlan | None  # None: not isolated in this direction (or not a pod)
    allowed_by: AllowRule | None

    @property
    def allowed(self) -> bool:
        return self.plan is None or self.allowed_by is not None


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
    def __init__(self, compiler: Compiler) -> None:
        self.compiler = compiler
        self._entries: dict[SetSpec, frozenset[Entry]] = {}

    def _members(self, spec: SetSpec) -> frozenset[Entry]:
        got = self._entries.get(spec)
        if got is None:
            got = self._entries[spec] = self.compiler.set_entries(spec)
        return got

    def rule_matches(self, rule: AllowRule, peer_ip: IPAddress, protocol: str, port: int | None) -> bool:
        spec = rule.peer
        if isinstance(spec, BlockSetSpec):
            if not spec.block.contains(peer_ip):
                return False
        elif spec is not None:
            if spec.port_name is not None:
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
        allowed_by = None
        if plan is not None:
            allowed_by = next((r for r in plan.rules if self.rule_matches(r, peer_ip, protocol, port)), None)
        return SideVerdict(direction, endpoint, plan, allowed_by)

    def verdict(self, src: Endpoint, dst: Endpoint, protocol: str = "TCP", port: int | None = 80) -> Verdict:
        if protocol == "ICMP":
            port = None
        egress = self.side(Direction.EGRESS, src, dst.ip, protocol, port)
        ingress = self.side(Direction.INGRESS, dst, src.ip, protocol, port)
        return Verdict(src, dst, protocol, port, egress, ingress)
