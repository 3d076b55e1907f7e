"""NetworkPolicy inputs the Kubernetes API server accepts or rejects on create, from its
validation rules (pkg/apis/networking/validation). tests/unit/test_validation_table.py holds
policyd's parser to this table; tests/cluster/test_api_validation.py holds the table itself
to a real kube-apiserver (server-side dry run), so the expectations are not ours.

Each case is a NetworkPolicy `spec` and whether the API server accepts it. Where a field is
null, the API server reads it as absent (a nil pointer); a null non-pointer struct is its
zero value."""

from __future__ import annotations

from typing import Any

ALL = {"podSelector": {}}
ABSENT = "<no spec>"  # a case whose object has no `spec` at all


def policy_object(name: str, spec: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                           "metadata": {"name": name, "namespace": "default"}}
    if spec != ABSENT:
        obj["spec"] = spec
    return obj


def peer_rule(peer: Any, ports: Any = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"from": [peer]}
    if ports is not None:
        rule["ports"] = ports
    return {"podSelector": {}, "ingress": [rule]}


def port_rule(*ports: Any) -> dict[str, Any]:
    return {"podSelector": {}, "ingress": [{"ports": list(ports)}]}


# (id, spec, accepted by the API server on create)
CASES: list[tuple[str, dict[str, Any], bool]] = [
    ("empty podSelector", ALL, True),
    ("spec absent", ABSENT, True),
    ("spec null", None, True),
    ("spec empty", {}, True),
    ("podSelector null", {"podSelector": None}, True),
    ("podSelector missing", {"ingress": []}, True),
    ("ingress null", {"podSelector": {}, "ingress": None}, True),
    ("rule null", {"podSelector": {}, "ingress": [None]}, True),
    ("peer podSelector only", peer_rule({"podSelector": {"matchLabels": {"a": "b"}}}), True),
    ("peer namespaceSelector null beside podSelector", peer_rule({"podSelector": {}, "namespaceSelector": None}), True),
    ("peer namespaceSelector null alone", peer_rule({"namespaceSelector": None}), False),
    ("peer podSelector null beside namespaceSelector", peer_rule({"podSelector": None, "namespaceSelector": {}}), True),
    ("peer all null", peer_rule({"podSelector": None, "namespaceSelector": None, "ipBlock": None}), False),
    ("peer empty", peer_rule({}), False),
    ("peer ipBlock null beside podSelector", peer_rule({"podSelector": {}, "ipBlock": None}), True),
    ("peer ipBlock and podSelector", peer_rule({"podSelector": {}, "ipBlock": {"cidr": "10.0.0.0/8"}}), False),
    ("ipBlock canonical", peer_rule({"ipBlock": {"cidr": "10.0.0.0/24"}}), True),
    ("ipBlock host bits", peer_rule({"ipBlock": {"cidr": "10.0.0.1/24"}}), False),
    ("ipBlock no prefix", peer_rule({"ipBlock": {"cidr": "10.0.0.1"}}), False),
    ("ipBlock IPv6", peer_rule({"ipBlock": {"cidr": "fd00::/64"}}), True),
    ("ipBlock except inside", peer_rule({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}), True),
    ("ipBlock except outside", peer_rule({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}), False),
    ("ipBlock except equal", peer_rule({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8"]}}), False),
    ("ipBlock cidr missing", peer_rule({"ipBlock": {}}), False),
    ("port number", port_rule({"port": 80}), True),
    ("port 65535", port_rule({"port": 65535}), True),
    ("port 0", port_rule({"port": 0}), False),
    ("port 65536", port_rule({"port": 65536}), False),
    ("port negative", port_rule({"port": -1}), False),
    ("port numeric string", port_rule({"port": "80"}), False),
    ("port zero-padded string", port_rule({"port": "080"}), False),
    ("port name", port_rule({"port": "http"}), True),
    ("port name too long", port_rule({"port": "a23456789012345x"}), False),
    ("port name upper case", port_rule({"port": "HTTP"}), False),
    ("port null (all ports of the protocol)", port_rule({"protocol": "UDP", "port": None}), True),
    ("protocol lower case", port_rule({"protocol": "tcp", "port": 80}), False),
    ("protocol SCTP", port_rule({"protocol": "SCTP", "port": 80}), True),
    ("endPort range", port_rule({"port": 80, "endPort": 90}), True),
    ("endPort below port", port_rule({"port": 90, "endPort": 80}), False),
    ("endPort without port", port_rule({"endPort": 90}), False),
    ("endPort with named port", port_rule({"port": "http", "endPort": 90}), False),
    ("policyTypes both", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}, True),
    ("policyTypes unknown", {"podSelector": {}, "policyTypes": ["Sideways"]}, False),
    ("policyTypes three", {"podSelector": {}, "policyTypes": ["Ingress", "Egress", "Ingress"]}, False),
    ("matchExpressions In without values", {"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}, False),
    ("matchExpressions Exists with values",
     {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}}, False),
    ("matchLabels bad value", {"podSelector": {"matchLabels": {"a": "-x"}}}, False),
]
