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
    got = CounterIndex(list(c.plans.values())).sum(fake.rule_counters())
    drop = RuleKey("drop", NS, f"{NS}/{policy}", "ingress", "")
    allow = RuleKey("allow", NS, policy, "ingress", "0")
    assert got.by_rule.get(drop) is not None and got.by_rule[drop].rules >= 1, got.by_rule
    assert got.by_rule.get(allow) is not None and got.by_rule[allow].rules >= 1, got.by_rule
