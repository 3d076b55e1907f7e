"""NetworkPolicy semantics: the examples of the Kubernetes concept page and the API
reference's contract (isolation per direction, OR across peers and rules, AND within a peer,
ipBlock except, named ports, endPort), checked through the engine's evaluator (the same plan
the dataplane renders)."""

from __future__ import annotations

import ipaddress
import json

import pytest

from policyd.compile.evaluate import Endpoint, Evaluator
from policyd.whatif.matrix import compute, endpoint

# 3 namespaces × 3 pods, each pod serving TCP/UDP 80 ("http"/"dns-ish") and TCP 81 ("metrics").
CLUSTER = """
apiVersion: v1
kind: List
items:
""" + "".join(
    f"""
- apiVersion: v1
  kind: Namespace
  metadata: {{name: {ns}, labels: {{ns: {ns}}}}}
"""
    + "".join(
        f"""
- apiVersion: v1
  kind: Pod
  metadata: {{name: {pod}, namespace: {ns}, labels: {{pod: {pod}}}}}
  spec:
    nodeName: node-1
    containers:
    - name: c
      ports:
      - {{name: http, containerPort: {80 if pod != 'c' else 8080}}}
      - {{name: metrics, containerPort: 81}}
      - {{name: udp-http, containerPort: 80, protocol: UDP}}
"""
        for pod in "abc"
    )
    for ns in "xyz"
)


def policy(body: str, name: str = "p", ns: str = "x") -> str:
    return f"""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: {name}, namespace: {ns}}}
spec:
{body}
"""


@pytest.fixture
def check(world):
    def run(*policies: str):
        w = world(CLUSTER, *policies)
        ev = Evaluator(w.compile())

        def allowed(src: str, dst: str, proto: str = "TCP", port: int | None = 80) -> bool:
            s = w.find_pod(src)
            d = w.find_pod(dst)
            return ev.verdict(endpoint(s), endpoint(d), proto, port).allowed

        allowed.world = w  # type: ignore[attr-defined]
        allowed.ev = ev  # type: ignore[attr-defined]
        return allowed

    return run


def test_no_policy_allows_everything(check):
    a = check()
    assert a("x/a", "y/b") and a("y/b", "x/a", "UDP", 80) and a("z/c", "x/a", "ICMP", None)


def test_default_deny_ingress(check):
    a = check(policy("  podSelector: {}\n  policyTypes: [Ingress]"))
    assert not a("y/a", "x/a") and not a("x/b", "x/a")
    assert a("x/a", "y/a"), "egress is untouched by an ingress-only policy"


def test_allow_all_ingress_overrides_deny(check):
    a = check(
        policy("  podSelector: {}\n  policyTypes: [Ingress]", "deny"),
        policy("  podSelector: {}\n  ingress: [{}]\n  policyTypes: [Ingress]", "allow"),
    )
    assert a("y/a", "x/a") and a("z/c", "x/b", "UDP", 80)


def test_default_deny_egress_and_allow_all_egress(check):
    a = check(policy("  podSelector: {}\n  policyTypes: [Egress]"))
    assert not a("x/a", "y/a") and a("y/a", "x/a")
    a = check(policy("  podSelector: {}\n  policyTypes: [Egress]", "d"), policy("  podSelector: {}\n  egress: [{}]\n  policyTypes: [Egress]", "e"))
    assert a("x/a", "y/a")


def test_default_deny_all(check):
    a = check(policy("  podSelector: {}\n  policyTypes: [Ingress, Egress]"))
    assert not a("x/a", "y/a") and not a("y/a", "x/a") and not a("x/a", "x/b")
    assert a("y/a", "z/a")


def test_policy_types_defaulting(check):
    # No policyTypes and no egress: Ingress only.
    a = check(policy("  podSelector: {matchLabels: {pod: a}}\n  ingress: []"))
    assert not a("y/a", "x/a") and a("x/a", "y/b")
    # No policyTypes but egress rules: Ingress and Egress.
    a = check(policy("  podSelector: {matchLabels: {pod: a}}\n  egress:\n  - to: [{podSelector: {matchLabels: {pod: b}}}]"))
    assert not a("y/a", "x/a"), "Ingress is always defaulted in"
    assert a("x/a", "x/b") and not a("x/a", "x/c") and not a("x/a", "y/b")


def test_pod_selector_alone_is_own_namespace(check):
    a = check(policy("  podSelector: {}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}]"))
    assert a("x/b", "x/a") and not a("y/b", "x/a") and not a("x/c", "x/a")


def test_and_versus_or_of_selectors(check):
    # One peer with both selectors: pod b in namespace y only (AND).
    a = check(policy("""  podSelector: {}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
      podSelector: {matchLabels: {pod: b}}"""))
    assert a("y/b", "x/a") and not a("y/a", "x/a") and not a("x/b", "x/a") and not a("z/b", "x/a")
    # Two peers: any pod of namespace y, or pod b of x (OR).
    a = check(policy("""  podSelector: {}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
    - podSelector: {matchLabels: {pod: b}}"""))
    assert a("y/b", "x/a") and a("y/a", "x/a") and a("x/b", "x/a") and not a("z/b", "x/a") and not a("x/c", "x/a")


def test_empty_namespace_selector_is_all_namespaces(check):
    a = check(policy("  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: c}}}]"))
    assert a("z/c", "x/a") and a("x/c", "x/a") and not a("z/a", "x/a")


def test_ipblock_with_except_applies_to_pod_ips(check):
    a = check()
    w = a.world  # type: ignore[attr-defined]
    yb = w.find_pod("y/b").ips[0]
    cidr = ipaddress.ip_network(f"{yb}/24", strict=False)
    a = check(policy(f"""  podSelector: {{}}
  ingress:
  - from:
    - ipBlock: {{cidr: "{cidr}", except: ["{yb}/32"]}}"""))
    assert not a("y/b", "x/a"), "the excepted address is not allowed"
    assert a("y/a", "x/a"), "other addresses of the block are"


def test_concept_page_full_example(check):
    """The test-network-policy example: ingress from ipBlock/namespace/pod on 6379, egress to a CIDR on 5978."""
    a = check(policy("""  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - ipBlock: {cidr: 172.17.0.0/16, except: [172.17.1.0/24]}
    - namespaceSelector: {matchLabels: {ns: y}}
    - podSelector: {matchLabels: {pod: b}}
    ports: [{protocol: TCP, port: 6379}]
  egress:
  - to: [{ipBlock: {cidr: 10.0.0.0/24}}]
    ports: [{protocol: TCP, port: 5978}]"""))
    ev = a.ev  # type: ignore[attr-defined]
    xa = endpoint(a.world.find_pod("x/a"))  # type: ignore[attr-defined]
    assert a("y/c", "x/a", "TCP", 6379) and a("x/b", "x/a", "TCP", 6379)
    assert not a("y/c", "x/a", "TCP", 80) and not a("z/c", "x/a", "TCP", 6379)
    assert ev.verdict(Endpoint(ipaddress.ip_address("172.17.2.9")), xa, "TCP", 6379).allowed
    assert not ev.verdict(Endpoint(ipaddress.ip_address("172.17.1.9")), xa, "TCP", 6379).allowed
    assert ev.verdict(xa, Endpoint(ipaddress.ip_address("10.0.0.7")), "TCP", 5978).allowed
    assert not ev.verdict(xa, Endpoint(ipaddress.ip_address("10.0.0.7")), "TCP", 5979).allowed
    assert not a("x/a", "y/a")


def test_end_port_range(check):
    a = check(policy("  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - ports: [{protocol: TCP, port: 32000, endPort: 32768}]"))
    assert a("x/a", "y/a", "TCP", 32000) and a("x/a", "y/a", "TCP", 32768)
    assert not a("x/a", "y/a", "TCP", 31999) and not a("x/a", "y/a", "TCP", 32769)
    assert not a("x/a", "y/a", "UDP", 32000)


def test_protocols_are_distinct(check):
    a = check(policy("  podSelector: {}\n  ingress:\n  - ports: [{protocol: UDP, port: 80}, {protocol: SCTP, port: 80}]"))
    assert a("y/a", "x/a", "UDP", 80) and a("y/a", "x/a", "SCTP", 80)
    assert not a("y/a", "x/a", "TCP", 80) and not a("y/a", "x/a", "ICMP", None)


def test_ingress_named_port_resolves_on_destination(check):
    # x/c serves "http" on 8080; x/a and x/b on 80.
    a = check(policy("  podSelector: {}\n  ingress:\n  - ports: [{port: http}]"))
    assert a("y/a", "x/a", "TCP", 80) and not a("y/a", "x/a", "TCP", 8080)
    assert a("y/a", "x/c", "TCP", 8080) and not a("y/a", "x/c", "TCP", 80)


def test_egress_named_port_resolves_per_destination_pod(check):
    a = check(policy("  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - ports: [{port: http}]"))
    assert a("x/a", "y/a", "TCP", 80) and a("x/a", "y/c", "TCP", 8080)
    assert not a("x/a", "y/c", "TCP", 80) and not a("x/a", "y/a", "TCP", 8080)
    ev = a.ev  # type: ignore[attr-defined]
    xa = endpoint(a.world.find_pod("x/a"))  # type: ignore[attr-defined]
    assert not ev.verdict(xa, Endpoint(ipaddress.ip_address("8.8.8.8")), "TCP", 80).allowed, "a name never resolves on a non-pod"


def test_named_port_that_resolves_nowhere_matches_nothing(check):
    a = check(policy("  podSelector: {}\n  ingress:\n  - ports: [{port: nosuch}]"))
    assert not a("y/a", "x/a", "TCP", 80) and not a("y/a", "x/a", "TCP", 81)


def test_named_port_with_ipblock_peer_matches_nothing(check):
    a = check(policy("  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 0.0.0.0/0}}]\n    ports: [{port: http}]"))
    assert not a("x/a", "y/a", "TCP", 80)


def test_union_of_policies(check):
    a = check(
        policy("  podSelector: {}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}]", "one"),
        policy("  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: z}}}]", "two"),
    )
    assert a("x/b", "x/a") and a("z/a", "x/a") and not a("y/a", "x/a")


def test_policies_of_other_namespaces_do_not_select(check):
    a = check(policy("  podSelector: {}\n  policyTypes: [Ingress]", ns="y"))
    assert a("z/a", "x/a") and not a("z/a", "y/a")


@pytest.mark.parametrize(
    "expr, members",
    [
        ("{key: pod, operator: In, values: [a, b]}", {"a", "b"}),
        ("{key: pod, operator: NotIn, values: [a]}", {"b", "c", "nolabel"}),
        ("{key: pod, operator: Exists}", {"a", "b", "c"}),
        ("{key: pod, operator: DoesNotExist}", {"nolabel"}),
    ],
)
def test_selector_operators(check, world, expr, members):
    extra = """
apiVersion: v1
kind: Pod
metadata: {name: nolabel, namespace: x}
spec: {nodeName: node-1}
"""
    w = world(CLUSTER, extra, policy(f"  podSelector: {{}}\n  ingress:\n  - from: [{{podSelector: {{matchExpressions: [{expr}]}}}}]"))
    m = compute(w.compile(), w.pods)
    got = {src.split("/")[1] for src in m.pods if src.startswith("x/") and "x/a" in m.allowed[src] and src != "x/a"}
    assert got == members - {"a"}


def test_matrix_json_shape(world):
    w = world(CLUSTER, policy("  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Ingress]"))
    m = compute(w.compile(), w.pods, "TCP", 80).to_json()
    assert set(m) == {"kind", "version", "protocol", "port", "pods", "allowed"}
    assert (m["kind"], m["version"]) == ("PodMatrix", 1), "the shape names itself (docs/json.md)"
    assert m["protocol"] == "TCP" and m["port"] == 80 and len(m["pods"]) == 9
    assert "x/a" in m["allowed"]["x/a"], "a pod reaches itself over its own loopback"
    assert "x/a" not in m["allowed"]["y/b"]


def test_matrix_cli_groups_by_profile_and_prints_every_pair_on_request(world, tmp_path, capsys):
    """x/a is isolated (only x/b may reach it); every other pod is treated alike by all."""
    from policyd.cli import main

    w = world(CLUSTER, policy("  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}]"))
    assert main(["matrix", "-f", str(tmp_path), "-o", "json"]) == 0
    g = json.loads(capsys.readouterr().out)
    assert sorted(map(sorted, g["groups"].values())) == [["x/a"], ["x/b"], sorted(p.key for p in w.pods if p.key not in ("x/a", "x/b"))]
    name = {p: k for k, v in g["groups"].items() for p in v}
    assert g["allowed"][name["x/b"]] == sorted(set(name.values()), key=lambda k: int(k[1:]))
    assert name["x/a"] not in g["allowed"][name["y/a"]] and name["x/a"] in g["allowed"][name["x/b"]]
    assert g["note"] == "every pod also reaches itself"
    assert (g["kind"], g["version"]) == ("ProfileMatrix", 1), "the default shape says it is not the every-pair one"

    assert main(["matrix", "-f", str(tmp_path), "-o", "json", "--by", "pod"]) == 0
    assert json.loads(capsys.readouterr().out) == compute(w.compile(), w.pods).to_json()

    assert main(["matrix", "-f", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "9 pods in 3 groups" in table and "Groups of more than one pod:" in table


def test_finished_and_host_network_pods_are_in_no_set(world):
    extra = """
apiVersion: v1
kind: Pod
metadata: {name: done, namespace: x, labels: {pod: b}}
spec: {nodeName: node-1}
status: {phase: Succeeded, podIPs: [{ip: 10.244.0.200}]}
---
apiVersion: v1
kind: Pod
metadata: {name: host, namespace: x, labels: {pod: b}}
spec: {nodeName: node-1, hostNetwork: true}
status: {podIPs: [{ip: 192.168.0.10}]}
"""
    w = world(CLUSTER, extra, policy("  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}]"))
    c = w.compile()
    plan = c.plans[w.find_pod("x/a").key]
    (rule,) = plan.ingress.rules
    entries = c.set_entries(rule.peer)
    assert entries == frozenset(w.find_pod("x/b").ips)
    assert "x/host" not in c.plans and "x/done" not in c.plans


def test_dual_stack_addresses_all_count(world):
    extra = """
apiVersion: v1
kind: Pod
metadata: {name: ds, namespace: y, labels: {pod: ds}}
spec: {nodeName: node-1}
status: {podIPs: [{ip: 10.244.0.250}, {ip: "fd00::250"}]}
"""
    w = world(CLUSTER, extra, policy("  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: ds}}}]"))
    c = w.compile()
    (rule,) = c.plans[w.find_pod("x/a").key].ingress.rules
    assert c.set_entries(rule.peer) == frozenset(map(ipaddress.ip_address, ["10.244.0.250", "fd00::250"]))
    ev = Evaluator(c)
    assert ev.verdict(Endpoint(ipaddress.ip_address("fd00::250"), w.find_pod("y/ds")), endpoint(w.find_pod("x/a"))).allowed


def test_null_fields_read_as_absent(check):
    """`namespaceSelector:` with no value is null, which the API server reads as absent: the
    peer is the policy's own namespace, never every namespace. A null podSelector beside a
    namespaceSelector is every pod of those namespaces; a missing spec.podSelector selects
    every pod of the namespace."""
    a = check(policy("  podSelector: {}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {pod: b}}\n      namespaceSelector:"))
    assert a("x/b", "x/a") and not a("y/b", "x/a") and not a("z/b", "x/a")
    a = check(policy("  podSelector: {}\n  ingress:\n  - from:\n    - podSelector:\n      namespaceSelector: {matchLabels: {ns: y}}"))
    assert a("y/c", "x/a") and not a("x/b", "x/a")
    a = check(policy("  policyTypes: [Ingress]"))
    assert not a("x/b", "x/a") and not a("y/a", "x/c")
