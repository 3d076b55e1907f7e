"""Per-rule hit counters, the pure half: which policy rule a kernel rule's counter belongs to,
and the sums by rule across pods.

Every kernel rule carries its id (`dataplane.rules`) in its comment, and every rule the
renderer wrote knows the policy rule it enforces (`Origin.key`: the allow rule's
`ns/policy ingress[0]`, the ClusterNetworkPolicy rule, a pod's isolation). The index maps
ids to those keys from the rendered chains themselves, so a counter is attributed by what
wrote it, never by parsing names out of text: an id the index does not know (the default
return of a pod no NetworkPolicy isolates) is counted apart (`other`), not guessed. Sums
are per policy rule, not per pod or address: the metrics' cardinality is bounded by the
policies.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..compile.evaluate import SideVerdict
from ..compile.plan import PodPlan
from ..dataplane.objects import ChainDef
from ..dataplane.render import Renderer
from ..dataplane.rules import Rule, RuleKey

__all__ = ["Count", "CounterIndex", "Counters", "RuleKey", "RuleTotals", "counters_from_metrics", "side_key"]


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
    """Rule id → RuleKey, from the chains that carry the rules."""

    def __init__(self, chains: Iterable[ChainDef]) -> None:
        self.keys: dict[str, RuleKey] = {}
        for c in chains:
            for r in c.rules:
                if isinstance(r, Rule) and r.origin is not None and r.origin.key is not None:
                    self.keys[r.id] = r.origin.key

    @staticmethod
    def of_plans(plans: Iterable[PodPlan], renderer: Renderer) -> CounterIndex:
        """From plans rendered as the agent that wrote the kernel's rules renders them (its
        backend and configuration): what a process other than the agent uses."""
        return CounterIndex(c for plan in plans for c in renderer.pod(plan, None).chains)

    def key(self, rule_id: str) -> RuleKey | None:
        """None for a counted rule no policy rule wrote."""
        return self.keys.get(rule_id)

    def sum(self, listed: Iterable[tuple[str, str, int, int]]) -> Counters:
        """(chain, rule id, packets, bytes) of every counted kernel rule → sums by policy rule:
        what the kernel holds now (a rewritten rule starts again at zero)."""
        out = Counters()
        for _, rid, packets, nbytes in listed:
            out.add(self.key(rid), packets, nbytes)
        return out


class RuleTotals:
    """Counts by policy rule that never go down, for Prometheus counters: each kernel rule
    (its chain, id and place among the chain's rules of that id) is followed from
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
        for chain, rid, packets, nbytes in listed:
            n = place[(chain, rid)] = place.get((chain, rid), -1) + 1
            ident = (chain, rid, n)
            last_p, last_b = self.last.get(ident, (0, 0))
            dp, db = (packets - last_p, nbytes - last_b) if packets >= last_p and nbytes >= last_b else (packets, nbytes)
            key = index.key(rid)
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


def counters_from_metrics(text: str) -> Counters:
    """An agent's /metrics text → its rule counters (policyd_rule_packets_total and
    policyd_rule_bytes_total), read with prometheus-client's own parser of the text format."""
    from prometheus_client.parser import text_string_to_metric_families

    out = Counters()
    for family in text_string_to_metric_families(text):
        if family.name not in ("policyd_rule_packets", "policyd_rule_bytes"):
            continue
        for sample in family.samples:
            if sample.name != family.name + "_total":
                continue
            lab = sample.labels
            key = RuleKey(lab.get("kind", ""), lab.get("namespace", ""), lab.get("policy", ""), lab.get("direction", ""), lab.get("rule", ""))
            count = out.by_rule.setdefault(key, Count())
            if family.name.endswith("packets"):
                count.packets = int(sample.value)
            else:
                count.bytes = int(sample.value)
    return out
