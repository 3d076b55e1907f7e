"""Per-rule hit counters on real packets, both CNI styles and both backends: the packets a
probe sends are counted on the rule that allowed or the isolation that dropped them, summed by
policy rule (never by pod), and a full sync with counters writes nothing (their values are not
drift). Expectations are the probes sent: each new TCP connection's SYN is the one packet of
it that reaches a pod chain (the rest is established traffic), and a dropped probe sends one
SYN within its timeout."""

from __future__ import annotations

import pytest

from policyd.observe.counters import RuleKey
from tests.kernel.conftest import VARIANTS, kernel_cluster

ALLOW_FRONTEND = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-frontend, namespace: default}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: frontend}}}]
  - from: [{namespaceSelector: {matchLabels: {team: ops}}}]
    ports: [{port: 80}]
"""
ALLOW = RuleKey("allow", "default", "allow-frontend", "ingress", "0")
OPS = RuleKey("allow", "default", "allow-frontend", "ingress", "1")
DROP = RuleKey("drop", "default", "default/allow-frontend", "ingress", "")


@pytest.fixture(params=VARIANTS)
def counted(request):
    with kernel_cluster(request.param, counters=True) as cluster:
        yield cluster


def test_counters_match_the_probes_sent(counted):
    c = counted
    c.apply(ALLOW_FRONTEND)
    assert c.sync(full=True).ops == 0, "counters read back as written"
    before = c.agent.counters().by_rule
    assert all(v.packets == 0 for v in before.values()), before
    for _ in range(3):
        assert c.can("f1", "b1")
    for _ in range(2):
        assert c.can("o1", "alt", "TCP", 80), "alt (a backend) serves 8080: its reset still means allowed"
    assert c.can("o1", "b1")
    for _ in range(4):
        assert not c.can("u1", "b1")
    got = c.agent.counters()
    assert got.by_rule[ALLOW].packets == 3, got.by_rule
    assert got.by_rule[OPS].packets == 3, "one rule, summed over the pods it allows to: alt twice, b1 once"
    assert got.by_rule[DROP].packets == 4
    assert got.by_rule[ALLOW].bytes > 3 * 40, "bytes are counted too (a SYN is 40+ bytes)"
    assert c.sync(full=True).ops == 0, "counted packets are not drift"
    keys = set(got.by_rule)
    assert all(k.policy and "/" not in k.namespace for k in keys), "labelled by policy, never by pod"


TRY_FRONTEND_ONLY = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: try-frontend-only, namespace: default, annotations: {policyd.io/audit: "true"}}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: frontend}}}]
"""


@pytest.fixture(params=VARIANTS)
def audited(request):
    from policyd.dataplane.droplog import DropLog

    with kernel_cluster(request.param, DropLog(group=7), counters=True) as cluster:
        yield cluster


def test_audit_mode_counts_what_it_would_drop_and_allow(audited):
    c = audited
    c.apply(TRY_FRONTEND_ONLY)
    assert c.sync(full=True).ops == 0
    for _ in range(3):
        assert c.can("u1", "b1"), "audit mode drops nothing"
    for _ in range(2):
        assert c.can("f1", "b1")
    got = c.agent.counters().by_rule
    assert got[RuleKey("audit-drop", "default", "default/try-frontend-only", "ingress", "")].packets == 3, got
    assert got[RuleKey("audit", "default", "try-frontend-only", "ingress", "0")].packets == 2, got
