"""Drop logging, the pure half: which of a pod chain's drops are logged, and under what name.

Every drop of a pod chain (the final drop of NetworkPolicy isolation, an Admin or Baseline
Deny, a policy that fails closed) can be preceded by a rate-limited NFLOG rule. Its prefix is
`pd-` and the log rule's id (`rules.Rule.log_prefix`: 16 hex digits of a hash of the rule,
which names its cause): never a name from a Kubernetes object in kernel syntax, and exact: a
packet's prefix names the rule that logged it even if the plan has changed since. The agent
maps prefixes back to causes from the rules it rendered (`observe.droplog.CauseBook`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..compile.plan import AllowRule, DirectionPlan, TierRule
from ..model.objects import Direction

PREFIX = "pd-"
AUDIT = "Audit"


@dataclass(frozen=True)
class DropLog:
    """NFLOG group and kernel-side rate limit, per pod chain drop rule (packets/second and
    burst): a flood is cut in the kernel, not in the agent."""

    group: int = 100
    rate: int = 10
    burst: int = 20
    # Sampled accept logging: packets/s each allow rule may log (0: none), naming the rule.
    accepts: int = 0

    def problems(self) -> list[str]:
        out = []
        if not 0 <= self.group <= 65535:
            out.append(f"the NFLOG group is 0-65535, not {self.group}")
        if not 1 <= self.rate <= 10_000:
            out.append(f"the drop log rate is 1-10000 packets/s per rule, not {self.rate}")
        if not 1 <= self.burst <= 100_000:
            out.append(f"the drop log burst is 1-100000 packets, not {self.burst}")
        if not 0 <= self.accepts <= 10_000:
            out.append(f"the accept log rate is 0-10000 packets/s per rule, not {self.accepts}")
        return out

    def logs(self, cause: DropCause) -> int:
        """The rate at which a step with this cause logs (0: it does not)."""
        return self.accepts if cause.accepted else self.rate


@dataclass(frozen=True)
class DropCause:
    """Why a pod chain drops: the pod and direction, and either the NetworkPolicies that
    isolate it there (tier "NetworkPolicy", rule "") or the ClusterNetworkPolicy rule."""

    pod: str
    direction: Direction
    tier: str  # NetworkPolicy | Admin | Baseline | Audit (logged only: audit mode drops nothing)
    policies: tuple[str, ...]
    rule: str = ""  # the ClusterNetworkPolicy rule, as `explain` describes it
    accepted: bool = False  # not a drop: the rule that allowed (sampled accept logging)

    def text(self) -> str:
        if self.accepted:
            return f"allowed by {self.rule}"
        if self.tier == AUDIT:
            n = len(self.policies)
            return (f"would be dropped by {n} audit-mode NetworkPolic{'y' if n == 1 else 'ies'} ({', '.join(self.policies)}): "
                    "no rule of theirs allows it; not enforced")
        if self.tier == "NetworkPolicy":
            n = len(self.policies)
            return f"isolated by {n} NetworkPolic{'y' if n == 1 else 'ies'} ({', '.join(self.policies)}), no rule allows"
        return f"denied by {self.rule}"


def isolation_cause(pod_key: str, direction: Direction, plan: DirectionPlan) -> DropCause:
    return DropCause(pod_key, direction, "NetworkPolicy", plan.policies)


def deny_cause(pod_key: str, rule: TierRule) -> DropCause:
    return DropCause(pod_key, rule.direction, rule.tier.value, (rule.policy,), rule.describe())


def audit_cause(pod_key: str, direction: Direction, plan: DirectionPlan) -> DropCause:
    return DropCause(pod_key, direction, AUDIT, plan.audit)


def accept_cause(pod_key: str, rule: AllowRule | TierRule) -> DropCause:
    """The rule that allowed, for sampled accept logging."""
    if isinstance(rule, TierRule):
        return DropCause(pod_key, rule.direction, rule.tier.value, (rule.policy,), rule.describe(), accepted=True)
    return DropCause(pod_key, rule.direction, "NetworkPolicy", (rule.policy,), rule.label(), accepted=True)
