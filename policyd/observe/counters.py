"""Per-rule hit counters, the pure half: which policy rule a kernel rule's counter belongs to,
and the sums by rule across pods.

Every rule of a pod chain carries a comment the renderer wrote from the plan (the allow
rule's `ns/policy ingress[0] from[1]`, the ClusterNetworkPolicy rule's label, the final
drop's reason). The index maps those comments back to where they came from, from the same
plans, so a counter is attributed by what wrote it, never by parsing names out of text: a
comment the index does not know (the default return of a pod no NetworkPolicy isolates) is
counted apart (`other`), not guessed. Sums are per
policy rule, not per pod or address: the metrics' cardinality is bounded by the policies.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..compile.evaluate import SideVerdict
from ..compile.plan import PodPlan
from ..dataplane.renderer import RULE_ID_RE, audit_comment, drop_reason, rule_id
from ..model.objects import Direction


@dataclass(frozen=True, order=True)
class RuleKey:
    """One policy rule, as the metrics label it: `kind` allow (a NetworkPolicy rule: policy
    is its name, rule its index), tier (a ClusterNetworkPolicy rule: policy is its name, rule
    the label's `ingress[0] from[1] Deny` part), drop (a pod's isolation: namespace is the
    pod's, policy lists the isolating policies as ns/name, rule is empty), audit (an
    audit-mode policy's rule that would allow) or audit-drop (what audit-mode policies would
    drop, like drop)."""

    kind: str
    namespace: str
    policy: str
    direction: str
    rule: str

    def describe(self) -> str:
        if self.kind == "allow":
            return f"{self.namespace}/{self.policy} {self.direction}[{self.rule}]"
        if self.kind == "audit":
            return f"{self.namespace}/{self.policy} {self.direction}[{self.rule}] (audit mode, would allow)"
        if self.kind == "drop":
            return f"{self.direction} isolation of {self.namespace} pods by {self.policy}"
        if self.kind == "audit-drop":
            return f"what audit-mode {self.policy} would drop of {self.namespace} pods' {self.direction} (not enforced)"
        return f"{self.policy} {self.rule}"


@dataclass
class Count:
    packets: int = 0
    bytes: int = 0
    rules: int = 0  # kernel rules summed (pods × families × port groups)


@dataclass
class Counters:
    by_rule: dict[RuleKey, Count] = field(default_factory=dict)
    other: Count = field(default_factory=Count)  # counting rules no policy rule wrote (e.g. "allowed by default")

    def add(self, key: RuleKey | None, packets: int, nbytes: int) -> None:
        c = self.other if key is None else self.by_rule.setdefault(key, Count())
        c.packets += packets
        c.bytes += nbytes
        c.rules += 1


class CounterIndex:
    """Rule comments → RuleKey, from the plans that wrote them."""

    def __init__(self, plans: Iterable[PodPlan]) -> None:
        self.keys: dict[str, RuleKey] = {}
        for plan in plans:
            ns = plan.pod.split("/", 1)[0]
            for d in Direction:
                dp = plan.direction(d)
                if dp is None:
                    continue
                for r in dp.rules:
                    pol_ns, _, pol = r.policy.partition("/")
                    self.keys[rule_id(r.label())] = RuleKey("allow", pol_ns, pol, d.value, str(r.rule_index))
                for t in (*dp.admin, *dp.baseline):
                    label = t.label()
                    self.keys[rule_id(label)] = RuleKey("tier", "", t.policy, d.value, label.split(" ", 1)[1])
                for r in dp.audit_rules:  # the audit chain's returns: what audited policies would allow
                    pol_ns, _, pol = r.policy.partition("/")
                    self.keys[rule_id(r.label())] = RuleKey("audit", pol_ns, pol, d.value, str(r.rule_index))
                if dp.isolated:
                    self.keys[rule_id(drop_reason(plan.pod, d, dp))] = RuleKey("drop", ns, ",".join(dp.policies), d.value, "")
                elif dp.audit:  # what audit-mode policies would drop here
                    self.keys[rule_id(audit_comment(plan.pod, d))] = RuleKey("audit-drop", ns, ",".join(dp.audit), d.value, "")

    def key(self, comment: str) -> RuleKey | None:
        """By the rule's stable id in its comment (dataplane.renderer.tagged); None for a
        counted rule no policy rule wrote."""
        m = RULE_ID_RE.search(comment)
        return self.keys.get(m.group(1)) if m else None

    def sum(self, listed: Iterable[tuple[str, str, int, int]]) -> Counters:
        """(chain, comment, packets, bytes) of every counted kernel rule → sums by policy rule:
        what the kernel holds now (a rewritten rule starts again at zero)."""
        out = Counters()
        for _, comment, packets, nbytes in listed:
            out.add(self.key(comment), packets, nbytes)
        return out


class RuleTotals:
    """Counts by policy rule that never go down, for Prometheus counters: each kernel rule
    (its chain, comment and place among the chain's rules of that comment) is followed from
    read to read, and only its increase is added; a rule whose count fell was rewritten (its
    chain changed) and counts from zero again, so its new count is its increase. Packets a
    rule counted between the last read and its rewrite are lost, never counted twice. A new
    agent's first read takes the kernel's counts as they are, so a restarted agent goes on
    from where the kernel stands."""

    def __init__(self) -> None:
        self.totals = Counters()
        self.last: dict[tuple[str, str, int], tuple[int, int]] = {}

    def update(self, index: CounterIndex, listed: Iterable[tuple[str, str, int, int]]) -> Counters:
        seen: dict[tuple[str, str, int], tuple[int, int]] = {}
        place: dict[tuple[str, str], int] = {}
        rules: dict[RuleKey | None, int] = {}
        for chain, comment, packets, nbytes in listed:
            n = place[(chain, comment)] = place.get((chain, comment), -1) + 1
            ident = (chain, comment, n)
            last_p, last_b = self.last.get(ident, (0, 0))
            dp, db = (packets - last_p, nbytes - last_b) if packets >= last_p and nbytes >= last_b else (packets, nbytes)
            key = index.key(comment)
            c = self.totals.other if key is None else self.totals.by_rule.setdefault(key, Count())
            c.packets += dp
            c.bytes += db
            rules[key] = rules.get(key, 0) + 1
            seen[ident] = (packets, nbytes)
        self.last = seen
        for key, c in [(None, self.totals.other), *self.totals.by_rule.items()]:
            c.rules = rules.get(key, 0)  # rules summed now; a rule gone keeps its total
        return self.totals


def side_key(side: SideVerdict) -> RuleKey | None:
    """The counted rule that decided one side of a verdict (None: nothing of ours decided,
    e.g. a pod no policy isolates)."""
    d = side.direction.value
    if side.decided_by is not None:
        return RuleKey("tier", "", side.decided_by.policy, d, side.decided_by.label().split(" ", 1)[1])
    if side.plan is None or not side.plan.isolated:
        return None
    if side.allowed_by is not None:
        ns, _, pol = side.allowed_by.policy.partition("/")
        return RuleKey("allow", ns, pol, d, str(side.allowed_by.rule_index))
    pod = side.endpoint.pod
    return RuleKey("drop", pod.namespace if pod is not None else "", ",".join(side.plan.policies), d, "")


METRIC_RE = re.compile(r"^policyd_rule_(packets|bytes)_total\{([^}]*)\} (\S+)$", re.M)
LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def counters_from_metrics(text: str) -> Counters:
    """An agent's /metrics text → its rule counters (policyd_rule_packets_total and
    policyd_rule_bytes_total)."""
    out = Counters()
    for what, labels, value in METRIC_RE.findall(text):
        lab = dict(LABEL_RE.findall(labels))
        key = RuleKey(lab.get("kind", ""), lab.get("namespace", ""), lab.get("policy", ""), lab.get("direction", ""), lab.get("rule", ""))
        count = out.by_rule.setdefault(key, Count())
        if what == "packets":
            count.packets = int(float(value))
        else:
            count.bytes = int(float(value))
    return out
