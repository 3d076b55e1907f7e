"""ClusterNetworkPolicy manifests read as the API server reads them with the CRD installed
(tests/cnp_validation_cases.py), and what an invalid or unenforceable policy does."""

from __future__ import annotations

import pytest

from policyd.compile.engine import compile_all
from policyd.compile.evaluate import Endpoint, Evaluator
from policyd.model.objects import Action, ClusterNetworkPolicy, Namespace, Pod
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


def verdict(*cnps: dict, protocol: str = "TCP", port: int | None = 80):
    import ipaddress
    objs = [parse_object(c, "x", 0, live=True)[0] for c in cnps]
    a = Pod("a", "client", {"app": "c"}, "n1", (ipaddress.ip_address("10.0.0.1"),))
    b = Pod("b", "server", {"app": "s"}, "n1", (ipaddress.ip_address("10.0.0.2"),))
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
    nodes = cnp_object("nodes", {"tier": "Baseline", "priority": 1, "subject": {"namespaces": {}},
                                 "egress": [{"action": "Deny", "to": [{"nodes": {}}]}]})
    assert not verdict(nodes, protocol="UDP", port=53).allowed, "nodes peers are not enforced: the Deny denies all"
