"""ClusterNetworkPolicy tiers on real packets, both CNI styles and both backends: Admin
before NetworkPolicy, Baseline after it, Pass handing on, Deny silent, networks peers."""

from __future__ import annotations

import json

from tests.kernel.conftest import ALLOW_FRONTEND


def cnp(name: str, tier: str, priority: int, subject: dict, direction: str, *rules: dict) -> str:
    """A ClusterNetworkPolicy manifest (JSON is YAML)."""
    return json.dumps({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy", "metadata": {"name": name},
                       "spec": {"tier": tier, "priority": priority, "subject": subject, direction: list(rules)}})


def pods(app: str) -> dict:
    return {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": app}}}}


BACKEND_PODS, FRONTEND = pods("backend"), pods("frontend")
OPS_NS = {"namespaces": {"matchLabels": {"team": "ops"}}}
EVERYONE = {"namespaces": {}}
TCP80 = [{"tcp": {"destinationPort": {"number": 80}}}]


def test_admin_deny_overrides_a_networkpolicy_allow_and_accept_overrides_isolation(cluster):
    deny = cnp("deny-frontend", "Admin", 10, BACKEND_PODS, "ingress", {"action": "Deny", "from": [FRONTEND], "protocols": TCP80})
    accept = cnp("accept-ops", "Admin", 20, BACKEND_PODS, "ingress", {"action": "Accept", "from": [OPS_NS]})
    cluster.apply(ALLOW_FRONTEND, deny, accept)
    assert not cluster.can("f1", "b1") and not cluster.can("f2", "b1"), "Admin Deny beats the NetworkPolicy's allow"
    assert cluster.can("f1", "b1", "TCP", 81), "the Deny names TCP 80 only; the NetworkPolicy allows 81"
    assert cluster.can("o1", "b1") and cluster.can("o1", "b1", "UDP", 80) and cluster.can("o1", "b1", "ICMP"), \
        "Admin Accept: no protocols means all traffic, whatever the NetworkPolicy says"
    assert not cluster.can("u1", "b1"), "the rest is still the NetworkPolicy's to decide"
    assert cluster.sync(full=True).ops == 0, "the kernel reads back what was written"
    assert cluster.sync().ops == 0, "nothing changed: no operation"


def test_pass_hands_on_to_networkpolicy_and_baseline(cluster):
    passing = cnp("pass-frontend", "Admin", 5, BACKEND_PODS, "ingress",
                  {"action": "Pass", "from": [FRONTEND]}, {"action": "Deny", "from": [EVERYONE]})
    baseline = cnp("baseline-deny", "Baseline", 5, BACKEND_PODS, "ingress", {"action": "Deny", "from": [EVERYONE]})
    cluster.apply(passing, baseline)
    # Frontends are passed by Admin; no NetworkPolicy isolates the backends; Baseline denies.
    assert not cluster.can("f1", "b1") and not cluster.can("u1", "b1") and not cluster.can("o1", "b1")
    cluster.apply(passing, baseline, ALLOW_FRONTEND)
    # Now the NetworkPolicy decides what Admin passed: frontends allowed, Baseline not consulted.
    assert cluster.can("f1", "b1") and cluster.can("f2", "b1")
    assert not cluster.can("u1", "b1") and not cluster.can("o1", "b1"), "Admin Deny after the Pass"
    assert cluster.sync(full=True).ops == 0


def test_baseline_applies_only_where_no_networkpolicy_isolates(cluster):
    baseline = cnp("baseline-egress", "Baseline", 1, EVERYONE, "egress",
                   {"action": "Accept", "to": [OPS_NS]}, {"action": "Deny", "to": [{"networks": ["0.0.0.0/0", "::/0"]}]})
    egress_np = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: u1-egress, namespace: default}
spec:
  podSelector: {matchLabels: {app: unallowed}}
  policyTypes: [Egress]
  egress: [{}]
"""
    cluster.apply(baseline, egress_np)
    assert not cluster.can("f1", "b2") and not cluster.can("b1", "f2", "UDP", 80) and not cluster.can("f1", "b2", family=6), \
        "Baseline Deny of every network: pod traffic too, both families"
    assert cluster.can("f1", "o1") and cluster.can("b1", "o1", "ICMP"), "Baseline Accept, earlier in the list"
    assert cluster.can("u1", "b2") and cluster.can("u1", "f2", "ICMP"), "a NetworkPolicy isolates u1's egress: Baseline is not consulted"
    assert cluster.can("f2", "b1"), "ingress is untouched (node-2's pods are not enforced here)"
    assert cluster.sync(full=True).ops == 0


def test_deleting_cluster_policies_removes_their_chains(cluster):
    passing = cnp("pass-all", "Admin", 5, BACKEND_PODS, "ingress", {"action": "Pass", "from": [EVERYONE]})
    cluster.apply(passing, ALLOW_FRONTEND)
    assert cluster.can("f1", "b1") and not cluster.can("u1", "b1")
    marker = "pod-inpass-" if cluster.backend == "nftables" else "POLICYD-INP-"
    assert marker in cluster.agent.dump()
    cluster.apply()
    assert cluster.can("u1", "b1") and cluster.can("f1", "b1")
    assert cluster.settle().ops > 0, "the flushed chains are deleted once they have waited"
    assert marker not in cluster.agent.dump(), "no pass chain is left behind"
