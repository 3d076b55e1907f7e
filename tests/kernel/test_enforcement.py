"""Policies enforced on real packets (ping, TCP, UDP) in both CNI styles."""

from __future__ import annotations

from pathlib import Path

EXAMPLES = Path(__file__).parents[2] / "examples" / "policies"


def example(name: str) -> str:
    return (EXAMPLES / f"{name}.yaml").read_text()


def test_no_policy_everything_flows(cluster):
    assert cluster.can("f1", "b1") and cluster.can("u1", "b2") and cluster.can("b2", "u1")
    assert cluster.can("f1", "b1", "UDP", 80) and cluster.can("o1", "f1", "ICMP")
    assert cluster.can("f1", "b1", family=6) and cluster.can("b2", "u1", "ICMP", family=6)


def test_allow_frontend_to_backend(cluster):
    cluster.apply(example("allow-frontend-to-backend"))
    assert cluster.can("f1", "b1") and cluster.can("f2", "b1"), "frontend → backend, same and other node"
    assert not cluster.can("u1", "b1") and not cluster.can("o1", "b1"), "others → backend blocked"
    assert not cluster.can("f1", "b1", "TCP", 81) and not cluster.can("f1", "b1", "UDP", 80), "only TCP 80"
    assert not cluster.can("f1", "b1", "ICMP")
    assert cluster.can("b1", "f1") and cluster.can("b1", "u1") and cluster.can("b1", "b2"), "backend egress untouched"
    assert cluster.can("f1", "b1", family=6) and not cluster.can("u1", "b1", family=6), "IPv6 too"


def test_default_deny_ingress_keeps_egress_and_replies(cluster):
    cluster.apply(example("default-deny-ingress"))
    assert not cluster.can("f2", "b1") and not cluster.can("u1", "b1") and not cluster.can("o1", "f1", "ICMP")
    assert not cluster.can("f1", "b1", "UDP", 80)
    # Egress is not isolated, and replies of allowed connections pass the isolated source.
    assert cluster.can("b1", "o1") and cluster.can("f1", "o1", "UDP", 80) and cluster.can("u1", "o1", "ICMP")


def test_default_deny_egress_allows_dns_only(cluster):
    cluster.apply(example("default-deny-egress-allow-dns"))
    assert not cluster.can("f1", "o1") and not cluster.can("f1", "b2", "ICMP")
    assert cluster.can("f1", "o1", "UDP", 53) and cluster.can("b1", "b2", "UDP", 53)
    assert not cluster.can("f1", "o1", "UDP", 80)
    assert cluster.can("o1", "f1"), "ingress of the default namespace is untouched"


def test_egress_policy_applies_to_the_node_itself(cluster):
    """Pod → node traffic goes through the input hook, where egress policy applies."""
    node_ip = str(cluster.topo.nodes["node-1"].fabric_ip)
    src = cluster.pods["f1"].key
    assert cluster.topo.probe(src, node_ip, "ICMP")
    cluster.apply(example("default-deny-egress-allow-dns"))
    assert not cluster.topo.probe(src, node_ip, "ICMP", timeout=0.4)
    assert cluster.topo.probe(cluster.pods["o1"].key, node_ip, "ICMP"), "pods without egress policy reach the node"


def test_namespace_selector(cluster):
    cluster.apply(example("allow-from-namespace"))
    assert cluster.can("o1", "b1") and cluster.can("o1", "b1", "TCP", 81) and cluster.can("o1", "b1", "UDP", 80)
    assert not cluster.can("f1", "b1") and not cluster.can("u1", "b1")


def test_ipblock_with_except(cluster):
    cluster.apply(
        f"""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: block, namespace: default}}
spec:
  podSelector: {{matchLabels: {{app: backend}}}}
  ingress:
  - from:
    - ipBlock: {{cidr: 10.244.1.0/24, except: [{cluster.ip("b2")}/32]}}
"""
    )
    assert cluster.can("f2", "b1"), "node-2's range is allowed"
    assert not cluster.can("b2", "b1"), "…except the excepted address"
    assert not cluster.can("f1", "b1"), "node-1's range is outside the block"


def test_named_ports_resolve_per_destination(cluster):
    cluster.apply(example("named-port"))
    assert cluster.can("f1", "b1", "TCP", 80) and cluster.can("f1", "alt", "TCP", 8080)
    assert not cluster.can("f1", "alt", "TCP", 81) and not cluster.can("f1", "b1", "TCP", 81)
    # Egress named port: resolves on each destination pod.
    cluster.apply(
        """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-http, namespace: default}
spec:
  podSelector: {matchLabels: {app: frontend}}
  policyTypes: [Egress]
  egress:
  - ports: [{port: http}]
"""
    )
    assert cluster.can("f1", "alt", "TCP", 8080) and cluster.can("f1", "b2", "TCP", 80)
    assert not cluster.can("f1", "b2", "TCP", 81)


def test_end_port_range(cluster):
    cluster.apply(example("endport-range"))
    assert cluster.can("f1", "b1", "TCP", 80) and cluster.can("f1", "b2", "TCP", 81) and cluster.can("f1", "o1", "UDP", 53)
    assert not cluster.can("f1", "b1", "UDP", 80) and not cluster.can("f1", "b1", "ICMP")


def test_policy_change_and_delete_take_effect(cluster):
    cluster.apply(example("allow-frontend-to-backend"))
    assert cluster.can("f1", "b1") and not cluster.can("u1", "b1")
    # Change: the rule now names `unallowed` instead of `frontend`.
    cluster.apply(example("allow-frontend-to-backend").replace("app: frontend", "app: unallowed"))
    assert cluster.can("u1", "b1") and not cluster.can("f1", "b1")
    cluster.apply()  # deleted: traffic reopens
    assert cluster.can("f1", "b1") and cluster.can("o1", "b1")


def test_pod_relabel_moves_it_in_and_out_of_sets(cluster):
    from dataclasses import replace

    cluster.apply(example("allow-frontend-to-backend"))
    u1 = cluster.pods["u1"]
    assert not cluster.can("u1", "b1")
    cluster.agent.compiler.upsert_pod(replace(u1, labels={"app": "frontend"}))
    r = cluster.sync()
    assert r.ops <= 4, f"a relabel changes set elements only, not chains ({r.ops} ops)"
    assert cluster.can("u1", "b1")
    cluster.agent.compiler.upsert_pod(u1)
    cluster.sync()
    assert not cluster.can("u1", "b1")


def test_sctp_is_enforced_at_ruleset_level(cluster):
    """No SCTP sockets in this kernel: we check the rule the kernel holds, not packets."""
    cluster.apply(
        """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: sctp, namespace: default}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress:
  - ports: [{protocol: SCTP, port: 80}]
"""
    )
    text = cluster.agent.dump()
    assert ("-p sctp -m sctp --dport 80" if cluster.backend == "iptables" else "sctp dport 80 return") in text
    assert not cluster.can("f1", "b1"), "TCP is not allowed by an SCTP-only rule"
