"""ClusterNetworkPolicy manifests read as the API server reads them with the CRD installed
(tests/cnp_validation_cases.py), and what an invalid or unenforceable policy does."""

from __future__ import annotations

import ipaddress

import pytest

from policyd.compile.engine import compile_all
from policyd.compile.evaluate import Endpoint, Evaluator
from policyd.model.objects import Action, ClusterNetworkPolicy, ContainerPort, Namespace, Node, Pod
from policyd.model.parse import parse_object
from tests.cnp_validation_cases import CASES, EXPERIMENTAL_CASES, cnp_object, egress

ALL_CASES = CASES + EXPERIMENTAL_CASES


@pytest.mark.parametrize("spec,accepted", [(s, a) for _, s, a in ALL_CASES], ids=[c[0] for c in ALL_CASES])
def test_policyd_accepts_what_the_api_server_accepts(spec, accepted):
    obj, problems = parse_object(cnp_object("c", spec), "case.yaml", 0)
    assert (not problems) == accepted, problems
    assert isinstance(obj, ClusterNetworkPolicy) and bool(obj.invalid) == (not accepted)


def test_both_served_versions_read_alike():
    for version in ("v1alpha2", "v1beta1"):
        obj = {**cnp_object("c", egress({"action": "Deny", "to": [{"namespaces": {}}]})), "apiVersion": f"policy.networking.k8s.io/{version}"}
        got, problems = parse_object(obj, "x", 0)
        assert not problems and isinstance(got, ClusterNetworkPolicy)
    _, problems = parse_object({**obj, "apiVersion": "policy.networking.k8s.io/v1"}, "x", 0)
    assert problems and "unsupported" in problems[0].message


SERVER_PORTS = (ContainerPort(53, "UDP", "dns"), ContainerPort(8080, "TCP", "web"))


def verdict(*cnps: dict, protocol: str = "TCP", port: int | None = 80):
    """client (namespace a) → server (namespace b, ports dns UDP/53 and web TCP/8080)."""
    objs = [parse_object(c, "x", 0, live=True)[0] for c in cnps]
    a = Pod("a", "client", {"app": "c"}, "n1", (ipaddress.ip_address("10.0.0.1"),))
    b = Pod("b", "server", {"app": "s"}, "n1", (ipaddress.ip_address("10.0.0.2"),), SERVER_PORTS)
    c = compile_all(None, [Namespace("a", {"kubernetes.io/metadata.name": "a"}), Namespace("b", {"kubernetes.io/metadata.name": "b"})],
                    [a, b], [], objs)
    return Evaluator(c).verdict(Endpoint(a.ips[0], a), Endpoint(b.ips[0], b), protocol, port)


def test_an_invalid_policy_denies_its_subject_both_ways():
    v = verdict(cnp_object("broken", egress({"action": "Accept", "to": [{"networks": ["10.0.0.1/8"]}]})))
    assert not v.allowed and v.egress.decided_by is not None and v.egress.decided_by.action is Action.DENY
    assert "invalid" in v.egress.decided_by.describe() and not v.ingress.allowed


def test_an_unknown_peer_fails_closed_as_the_api_documents():
    """A peer with no field we know (a newer CRD's): Accept rules match nothing through it,
    Deny and Pass rules deny all."""
    accept = cnp_object("accept", {"tier": "Admin", "priority": 1, "subject": {"namespaces": {}},
                                   "egress": [{"action": "Accept", "to": [{"futurePeer": {}}]}]})
    deny_rest = cnp_object("rest", {"tier": "Admin", "priority": 2, "subject": {"namespaces": {}},
                                    "egress": [{"action": "Deny", "to": [{"namespaces": {"matchLabels": {"x": "y"}}}]}]})
    assert verdict(accept, deny_rest).allowed, "the Accept matches nothing, the Deny does not match: allowed"
    passing = cnp_object("pass", {"tier": "Admin", "priority": 1, "subject": {"namespaces": {}},
                                  "egress": [{"action": "Pass", "to": [{"futurePeer": {}}, {"namespaces": {}}]}]})
    v = verdict(passing)
    assert not v.allowed and "not supported" in v.egress.decided_by.describe()
    domains = cnp_object("domains", {"tier": "Baseline", "priority": 1, "subject": {"namespaces": {}},
                                     "egress": [{"action": "Deny", "to": [{"domainNames": ["example.com"]}]}]})
    assert not verdict(domains, protocol="UDP", port=53).allowed, "domainNames peers are not enforced: the Deny denies all"


def node_object(name: str, labels: dict, *addresses: tuple[str, str]) -> Node:
    obj, problems = parse_object({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
                                  "status": {"addresses": [{"type": t, "address": a} for t, a in addresses]}}, "x", 0, live=True)
    assert not problems and isinstance(obj, Node)
    return obj


def test_nodes_peers_match_the_selected_nodes_addresses():
    """`nodes`: "a way to select a set of nodes in the cluster" — the InternalIP and ExternalIP
    addresses (either family) of the Nodes whose labels match; not a Hostname, not another
    node's address, not a pod's. Node changes move their addresses in and out, incrementally."""
    n1 = node_object("n1", {"role": "infra"}, ("InternalIP", "172.16.0.1"), ("ExternalIP", "192.0.2.1"), ("Hostname", "n1"),
                     ("InternalIP", "fd00::1"))
    n2 = node_object("n2", {"role": "worker"}, ("InternalIP", "172.16.0.2"))
    assert n1.addresses == tuple(map(ipaddress.ip_address, ("172.16.0.1", "192.0.2.1", "fd00::1"))) and n1.labels == {"role": "infra"}
    deny = admin("no-infra", 1, "egress", {"action": "Deny", "to": [{"nodes": {"matchLabels": {"role": "infra"}}}],
                                           "protocols": [{"tcp": {"destinationPort": {"number": 22}}}]})
    policy = parse_object(deny, "x", 0, live=True)[0]
    a = Pod("a", "client", {"app": "c"}, "n1", (ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("fd01::1")))
    c = compile_all(None, [Namespace("a", {})], [a], [], [policy], [n1, n2])
    ev = Evaluator(c)

    def to(address: str, port: int = 22) -> bool:
        return ev.verdict(Endpoint(a.ips[0] if "." in address else a.ips[1], a), Endpoint(ipaddress.ip_address(address)), "TCP", port).allowed

    assert not to("172.16.0.1") and not to("192.0.2.1") and not to("fd00::1"), "every address of a selected node"
    assert to("172.16.0.1", 80), "the rule's port only"
    assert to("172.16.0.2") and to("10.0.0.9"), "not another node's address, nor anyone else's"
    c.upsert_node(node_object("n2", {"role": "infra"}, ("InternalIP", "172.16.0.2")))  # relabelled into the selector
    c.upsert_node(node_object("n1", {"role": "infra"}, ("InternalIP", "172.16.0.9")))  # readdressed
    c.take_changes()
    ev = Evaluator(c)
    assert not to("172.16.0.2") and not to("172.16.0.9") and to("172.16.0.1") and to("192.0.2.1")
    c.delete_node("n2")
    ev = Evaluator(c)
    assert to("172.16.0.2") and not to("172.16.0.9")
    # An Accept through a nodes peer now matches (before, it matched nothing).
    accept = admin("ssh-infra", 0, "egress", {"action": "Accept", "to": [{"nodes": {"matchLabels": {"role": "infra"}}}]})
    c.upsert_cluster_policy(parse_object(accept, "x", 0, live=True)[0])
    ev = Evaluator(c)
    v = ev.verdict(Endpoint(a.ips[0], a), Endpoint(ipaddress.ip_address("172.16.0.9"), None, "n1"), "TCP", 22)
    assert v.allowed and v.egress.decided_by.policy == "ssh-infra"


def admin(name: str, priority: int, direction: str, *rules: dict) -> dict:
    return cnp_object(name, {"tier": "Admin", "priority": priority, "subject": {"namespaces": {}}, direction: list(rules)})


def test_lower_priority_value_goes_first_whatever_the_names():
    deny = admin("a-deny", 20, "egress", {"action": "Deny", "to": [{"namespaces": {}}]})
    accept = admin("z-accept", 10, "egress", {"action": "Accept", "to": [{"namespaces": {}}]})
    v = verdict(deny, accept)
    assert v.egress.allowed and v.egress.decided_by.policy == "z-accept"


@pytest.mark.parametrize("direction,peers", [("egress", "to"), ("ingress", "from")])
def test_a_named_port_takes_the_container_ports_own_protocol(direction, peers):
    """`destinationNamedPort: dns` is UDP/53 on the server: allowed there, not on TCP/53."""
    named = admin("named", 1, direction, {"action": "Accept", peers: [{"namespaces": {}}], "protocols": [{"destinationNamedPort": "dns"}]},
                  {"action": "Deny", peers: [{"namespaces": {}}]})
    assert verdict(named, protocol="UDP", port=53).allowed
    assert not verdict(named, protocol="TCP", port=53).allowed
    assert verdict(named, protocol="TCP", port=8080).allowed is False, "another named port of the pod does not count"


def test_a_single_port_is_a_range_of_one():
    """CNPPort("TCP", 80) once reached nftables as the range 80..null, which libnftables
    refused (found by bench/cluster_policies.py): one port is first..first."""
    from policyd.model.objects import CNPPort

    assert CNPPort("TCP", 80) == CNPPort("TCP", 80, 80) and CNPPort("TCP", 80).last == 80
    assert CNPPort(None, named_port="http").last is None


def test_a_namespaces_peer_means_all_their_pods():
    """CNPPeer(namespace_selector=…) alone once compiled to no set at all, so a Deny rule
    built that way matched nothing (found by bench/cluster_policies.py)."""
    from policyd.model.objects import CNPPeer
    from policyd.model.selectors import LabelSelector

    team = LabelSelector.build({"team": "a"}, None)
    assert CNPPeer(namespace_selector=team) == CNPPeer(namespace_selector=team, pod_selector=LabelSelector())
    with pytest.raises(ValueError, match="namespace selector"):
        CNPPeer(pod_selector=team)


def test_explain_names_the_node_and_the_nodes_peer(tmp_path, capsys):
    """`policyd explain --to node/NAME` (or a node's address) from manifests holding Node
    objects: the verdict names the node and the `nodes` selector that decided."""
    import yaml

    from policyd.cli import main

    docs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}},
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "labels": {"role": "infra"}},
         "status": {"addresses": [{"type": "InternalIP", "address": "172.16.0.1"}]}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client", "namespace": "a"},
         "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x"}]}},
        admin("no-infra", 1, "egress", {"action": "Deny", "to": [{"nodes": {"matchLabels": {"role": "infra"}}}]}),
    ]
    (tmp_path / "m.yaml").write_text(yaml.safe_dump_all(docs))
    assert main(["explain", "-f", str(tmp_path), "--from", "a/client", "--to", "node/n1"]) == 1
    out = capsys.readouterr().out
    assert "→ node n1 (172.16.0.1)" in out and "(nodes role=infra)" in out, out
    assert main(["explain", "-f", str(tmp_path), "--from", "a/client", "--to", "172.16.0.1"]) == 1
    assert "node n1" in capsys.readouterr().out
    assert main(["explain", "-f", str(tmp_path), "--from", "a/client", "--to", "node/n9"]) == 2
    assert "no node 'n9'" in capsys.readouterr().err
