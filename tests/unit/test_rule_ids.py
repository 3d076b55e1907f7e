"""Rule counters are attributed by a stable id in each counted rule's comment, so names of
any legal length work: a 63-character namespace and a 253-character pod name once put every
drop of that pod in `other` (the chain's last comment is cut shorter than the rest, to make
room for its digest, and the index keyed on the cut text)."""

from __future__ import annotations

import ipaddress

import pytest

from policyd.compile.engine import Compiler
from policyd.dataplane.config import DispatchMode, RenderConfig
from policyd.model.objects import Namespace, NetworkPolicy, Peer, Pod, PolicyRule
from policyd.model.selectors import MATCH_ALL, LabelSelector
from policyd.observe.counters import CounterIndex, RuleKey
from policyd.reconcile.syncer import Syncer

NS = "n" * 63
POD = ".".join(["p" * 63] * 3 + ["q" * 61])  # 253 characters, every label ≤ 63


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_counters_attribute_rules_of_the_longest_names(backend):
    from policyd.ipt.fake import FakeIptBackend
    from policyd.nft.fake import FakeBackend

    assert len(POD) == 253
    policy = "x" * 253
    c = Compiler("node-1")
    c.upsert_namespace(Namespace(NS, {}))
    c.upsert_policy(NetworkPolicy(NS, policy, LabelSelector.build({"app": "b"}, []), (PolicyRule((Peer(MATCH_ALL, None),), ()),)))
    c.upsert_pod(Pod(NS, POD, {"app": "b"}, "node-1", (ipaddress.ip_address("10.0.0.2"), ipaddress.ip_address("fd00::2"))))
    c.upsert_pod(Pod(NS, "peer", {}, "node-2", (ipaddress.ip_address("10.0.1.2"),)))
    fake = FakeBackend() if backend == "nftables" else FakeIptBackend()
    s = Syncer(c, fake, RenderConfig(mode=DispatchMode.ADDRESS, counters=True))
    s.sync()
    got = CounterIndex(ch for objs in s.desired.pods.values() for ch in objs.chains).sum(fake.rule_counters())
    drop = RuleKey("drop", NS, f"{NS}/{policy}", "ingress", "")
    allow = RuleKey("allow", NS, policy, "ingress", "0")
    assert got.by_rule.get(drop) is not None and got.by_rule[drop].rules >= 1, got.by_rule
    assert got.by_rule.get(allow) is not None and got.by_rule[allow].rules >= 1, got.by_rule


def test_totals_never_go_down_across_rewrites_and_count_each_packet_once():
    """Kernel counts as read at three scrapes: a pod's chain rewritten (its rule counts from
    zero again), a rule in two families with one comment, a pod gone. Prometheus counters
    must only grow, by what was counted since the last read."""
    from policyd.observe.counters import RuleTotals

    class Index:
        def key(self, comment: str) -> RuleKey | None:
            return {"(r:aaaaaaaa)": RuleKey("allow", "ns", "p", "ingress", "0")}.get(comment)

    allow = RuleKey("allow", "ns", "p", "ingress", "0")
    t = RuleTotals()
    reads = [
        [("pod-in-1", "(r:aaaaaaaa)", 10, 1000), ("pod-in-1", "(r:aaaaaaaa)", 3, 300), ("pod-in-2", "(r:aaaaaaaa)", 5, 500),
         ("forward-hook", "base", 7, 70)],
        # pod-in-1 rewritten: its two rules count 2 and 1 since; pod-in-2 went on to 6
        [("pod-in-1", "(r:aaaaaaaa)", 2, 200), ("pod-in-1", "(r:aaaaaaaa)", 1, 100), ("pod-in-2", "(r:aaaaaaaa)", 6, 600),
         ("forward-hook", "base", 9, 90)],
        # pod 2 gone; pod-in-1 on to 4 and 1
        [("pod-in-1", "(r:aaaaaaaa)", 4, 400), ("pod-in-1", "(r:aaaaaaaa)", 1, 100), ("forward-hook", "base", 9, 90)],
    ]
    c = t.update(Index(), reads[0])
    assert (c.by_rule[allow].packets, c.by_rule[allow].bytes, c.other.packets) == (18, 1800, 7), "a first read takes the kernel's counts"
    t.update(Index(), reads[1])
    assert (t.totals.by_rule[allow].packets, t.totals.other.packets) == (18 + 2 + 1 + 1, 9)
    t.update(Index(), reads[2])
    assert (t.totals.by_rule[allow].packets, t.totals.by_rule[allow].rules) == (22 + 2, 2)
