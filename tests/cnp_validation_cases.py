"""ClusterNetworkPolicy inputs the API server accepts or rejects on create with the
network-policy-api CRD installed (its OpenAPI bounds and CEL rules). tests/unit holds
policyd's parser to this table.

Each case is a `spec` and whether the API server accepts it."""

from __future__ import annotations

from typing import Any

EVERYONE = {"namespaces": {}}


def cnp_object(name: str, spec: Any) -> dict[str, Any]:
    return {"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy", "metadata": {"name": name}, "spec": spec}


def spec(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"tier": "Admin", "priority": 10, "subject": EVERYONE}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def egress(*rules: dict[str, Any]) -> dict[str, Any]:
    return spec(egress=list(rules))


def tcp(port: Any) -> dict[str, Any]:
    return {"tcp": {"destinationPort": port}}


CASES: list[tuple[str, dict[str, Any], bool]] = [
    ("subject only", spec(), True),
    ("baseline", spec(tier="Baseline"), True),
    ("unknown tier", spec(tier="Developer"), False),
    ("tier missing", spec(tier=None), False),
    ("priority 0 and 1000", spec(priority=1000), True),
    ("priority above 1000", spec(priority=1001), False),
    ("priority negative", spec(priority=-1), False),
    ("priority missing", spec(priority=None), False),
    ("subject with both fields", spec(subject={"namespaces": {}, "pods": {"podSelector": {}}}), False),
    ("subject empty", spec(subject={}), False),
    ("subject pods without podSelector", spec(subject={"pods": {"namespaceSelector": {}}}), False),
    ("subject pods", spec(subject={"pods": {"podSelector": {"matchLabels": {"app": "db"}}}}), True),
    ("accept to namespaces", egress({"action": "Accept", "to": [EVERYONE]}), True),
    ("unknown action", egress({"action": "Allow", "to": [EVERYONE]}), False),
    ("no peers", egress({"action": "Deny", "to": []}), False),
    ("peers missing", egress({"action": "Deny"}), False),
    ("peer with two fields", egress({"action": "Deny", "to": [{"namespaces": {}, "networks": ["10.0.0.0/8"]}]}), False),
    ("networks", egress({"action": "Deny", "to": [{"networks": ["10.0.0.0/8", "fd00::/8"]}]}), True),
    ("network with host bits", egress({"action": "Deny", "to": [{"networks": ["10.0.0.1/8"]}]}), False),
    ("network not a CIDR", egress({"action": "Deny", "to": [{"networks": ["10.0.0.1"]}]}), False),
    ("networks empty", egress({"action": "Deny", "to": [{"networks": []}]}), False),
    ("networks in ingress", spec(ingress=[{"action": "Deny", "from": [{"networks": ["10.0.0.0/8"]}]}]), False),
    ("port number", egress({"action": "Deny", "to": [EVERYONE], "protocols": [tcp({"number": 80})]}), True),
    ("port range", egress({"action": "Deny", "to": [EVERYONE], "protocols": [tcp({"range": {"start": 80, "end": 81}})]}), True),
    ("port range reversed", egress({"action": "Deny", "to": [EVERYONE], "protocols": [tcp({"range": {"start": 81, "end": 80}})]}), False),
    ("port range of one", egress({"action": "Deny", "to": [EVERYONE], "protocols": [tcp({"range": {"start": 80, "end": 80}})]}), False),
    ("port 0", egress({"action": "Deny", "to": [EVERYONE], "protocols": [tcp({"number": 0})]}), False),
    ("port and range", egress({"action": "Deny", "to": [EVERYONE], "protocols": [tcp({"number": 80, "range": {"start": 1, "end": 2}})]}), False),
    ("tcp without port", egress({"action": "Deny", "to": [EVERYONE], "protocols": [{"tcp": {}}]}), False),
    ("two protocols in one entry", egress({"action": "Deny", "to": [EVERYONE], "protocols": [{**tcp({"number": 80}), "udp": {"destinationPort": {"number": 53}}}]}), False),
    ("protocols empty", egress({"action": "Deny", "to": [EVERYONE], "protocols": []}), False),
    ("udp and sctp", egress({"action": "Deny", "to": [EVERYONE], "protocols": [{"udp": {"destinationPort": {"number": 53}}}, {"sctp": {"destinationPort": {"number": 9}}}]}), True),
    ("rule name of 100", egress({"name": "x" * 100, "action": "Pass", "to": [EVERYONE]}), True),
    ("rule name of 101", egress({"name": "x" * 101, "action": "Pass", "to": [EVERYONE]}), False),
    ("26 rules", egress(*[{"action": "Pass", "to": [EVERYONE]}] * 26), False),
    ("25 rules", egress(*[{"action": "Pass", "to": [EVERYONE]}] * 25), True),
]

# Fields of the CRD's experimental channel (installed by the chart).
EXPERIMENTAL_CASES: list[tuple[str, dict[str, Any], bool]] = [
    ("named port", egress({"action": "Accept", "to": [EVERYONE], "protocols": [{"destinationNamedPort": "http"}]}), True),
    ("named port with networks", egress({"action": "Accept", "to": [{"networks": ["10.0.0.0/8"]}], "protocols": [{"destinationNamedPort": "http"}]}), False),
    ("nodes peer", egress({"action": "Deny", "to": [{"nodes": {}}]}), True),
    ("domainNames peer", egress({"action": "Accept", "to": [{"domainNames": ["example.com"]}]}), True),
    ("domainNames wildcard, case, root dot, underscore", egress({"action": "Accept", "to": [{"domainNames": ["*.Example.com.", "a_b.example.com"]}]}), True),
    ("domainNames wildcard inside", egress({"action": "Accept", "to": [{"domainNames": ["a.*.example.com"]}]}), False),
    ("domainNames wildcard of a top-level domain", egress({"action": "Accept", "to": [{"domainNames": ["*.com"]}]}), False),
    ("domainNames single label", egress({"action": "Accept", "to": [{"domainNames": ["localhost"]}]}), False),
    ("domainNames empty", egress({"action": "Accept", "to": [{"domainNames": []}]}), False),
    ("domainNames duplicate", egress({"action": "Accept", "to": [{"domainNames": ["example.com", "example.com"]}]}), False),
    ("domainNames 25", egress({"action": "Accept", "to": [{"domainNames": [f"n{i}.example.com" for i in range(25)]}]}), True),
    ("domainNames 26", egress({"action": "Accept", "to": [{"domainNames": [f"n{i}.example.com" for i in range(26)]}]}), False),
    # The API documents domainNames for Accept rules only but does not refuse them elsewhere
    # (policyd then enforces the rule as one with a peer it does not support: docs/fqdn.md).
    ("domainNames in a Deny rule", egress({"action": "Deny", "to": [{"domainNames": ["example.com"]}]}), True),
    ("domainNames with a named port", egress({"action": "Accept", "to": [{"domainNames": ["example.com"]}],
                                              "protocols": [{"destinationNamedPort": "http"}]}), False),
]
