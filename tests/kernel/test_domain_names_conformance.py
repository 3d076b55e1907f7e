"""Conformance-style cases for ClusterNetworkPolicy `domainNames` (the upstream suite has none):
each case, in the style of network-policy-api's conformance tests, names the policies it
applies and the connections it expects, written from the API's text — not from policyd's
engine. Every lookup goes to a real DNS server (CoreDNS) from the pod, and each connection
is the first one after its lookup. Run on routed/nftables and bridge/iptables, over IPv4
and IPv6; docs/conformance.md lists the cases and their results."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest

from policyd.dataplane.config import Fqdn
from tests.kernel.conftest import kernel_cluster
from tests.kernel.test_learned_names import QUEUE, Names

ZONE = """$TTL 2
$ORIGIN example.test.
api      IN A     198.51.100.10
api      IN AAAA  2001:db8:100::10
API2     IN A     198.51.100.11
www      IN CNAME edge.cdn.example.test.
other    IN A     198.51.100.30
other    IN AAAA  2001:db8:100::30
big      300 IN A 198.51.100.40
$ORIGIN cdn.example.test.
@        IN A     198.51.100.50
edge     IN A     198.51.100.20
edge     IN AAAA  2001:db8:100::20
deep.sub IN A     198.51.100.21
"""
# An answer too big for UDP without EDNS (40 addresses): the server truncates it, the pod's
# resolver asks again over TCP, and the agent reads the answer from the TCP stream.
ZONE += "".join(f"big.example.test. 300 IN A 198.51.101.{i}\n" for i in range(1, 40))

DNS_RULE = """
  - action: Accept
    to: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {k8s-app: kube-dns}}}}]
    protocols: [{udp: {destinationPort: {number: 53}}}, {tcp: {destinationPort: {number: 53}}}]"""


def cnp(name: str, app: str, names: list[str], priority: int = 10, deny: bool = True) -> str:
    return f"""
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {{name: {name}}}
spec:
  tier: Admin
  priority: {priority}
  subject: {{pods: {{namespaceSelector: {{}}, podSelector: {{matchLabels: {{app: {app}}}}}}}}}
  egress:{DNS_RULE}
  - action: Accept
    to: [{{domainNames: {names}}}]""" + ("""
  - action: Deny
    to: [{networks: ["0.0.0.0/0", "::/0"]}]""" if deny else "")


@dataclass(frozen=True)
class Case:
    name: str
    policies: tuple[str, ...]
    # (pod, name to look up, IP family, connects?) in order; ("sleep", "", 0, seconds) waits
    steps: tuple[tuple[str, str, int, bool], ...]
    direct: tuple[tuple[str, str, bool], ...] = field(default=())  # (pod, address, connects?) after the steps


CASES = [
    Case("exact name: its addresses are admitted, over IPv4 and IPv6",
         (cnp("exact", "frontend", ["api.example.test"]),),
         (("f1", "api.example.test", 4, True), ("f1", "api.example.test", 6, True))),
    Case("names compare without case and with the root's dot",
         (cnp("case", "frontend", ["API2.Example.Test."]),),
         (("f1", "api2.example.test", 4, True), ("f1", "API2.EXAMPLE.TEST", 4, True))),
    Case("an unlisted name resolves and is refused; so is its address",
         (cnp("unlisted", "frontend", ["api.example.test"]),),
         (("f1", "other.example.test", 4, False), ("f1", "other.example.test", 6, False)),
         (("f1", "198.51.100.30", False), ("f1", "2001:db8:100::30", False))),
    Case("the name asked counts: a listed name that is a CNAME admits its chain's addresses",
         (cnp("cname", "frontend", ["www.example.test"]),),
         (("f1", "www.example.test", 4, True), ("f1", "www.example.test", 6, True)),
         (("f1", "198.51.100.21", False),)),
    Case("the CNAME's target asked directly is another name",
         (cnp("cname-target", "frontend", ["www.example.test"]),),
         (("f1", "edge.cdn.example.test", 4, False),)),
    Case("a wildcard matches one or more labels, never the name itself",
         (cnp("wildcard", "frontend", ["*.cdn.example.test"]),),
         (("f1", "edge.cdn.example.test", 4, True), ("f1", "deep.sub.cdn.example.test", 4, True),
          ("f1", "cdn.example.test", 4, False))),
    Case("after the answer's TTL the address is refused until the next lookup",
         (cnp("ttl", "frontend", ["api.example.test"]),),
         (("f1", "api.example.test", 4, True), ("sleep", "", 0, 3.2)),
         (("f1", "198.51.100.10", False),)),
    Case("several policies: each admits its own names to its own subjects (a deny of a higher priority comes first)",
         (cnp("fe-api", "frontend", ["api.example.test"], 10, deny=False), cnp("fe-other", "frontend", ["other.example.test"], 20),
          cnp("be-www", "backend", ["www.example.test"], 30)),
         (("f1", "api.example.test", 4, True), ("f1", "other.example.test", 4, True), ("b1", "www.example.test", 4, True),
          ("b1", "api.example.test", 4, False), ("f1", "www.example.test", 4, False))),
    Case("an address learned from one pod's lookup admits only the pods whose policy lists the name",
         (cnp("fe", "frontend", ["api.example.test"]), cnp("be", "backend", ["other.example.test"], 20)),
         (("b1", "other.example.test", 4, True),),
         (("f1", "198.51.100.30", False), ("u1", "198.51.100.30", True))),
    Case("an answer too big for UDP is read from the TCP stream",
         (cnp("big", "frontend", ["big.example.test"]),),
         (("f1", "big.example.test", 4, True),)),
    Case("pods no policy selects are not affected",
         (cnp("fe-only", "frontend", ["api.example.test"]),),
         (("u1", "other.example.test", 4, True), ("u1", "api.example.test", 4, True))),
]


@pytest.fixture(scope="module", params=["routed-nftables", "bridge-iptables"])
def names(request, tmp_path_factory):
    with kernel_cluster(request.param, fqdn=Fqdn(QUEUE, True)) as cluster:
        n = Names(cluster, tmp_path_factory.mktemp("dns"), zone=ZONE)
        try:
            yield n
        finally:
            n.close()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_domain_names_conformance(names, case):
    c = names.cluster
    c.apply()  # (no policy: what earlier cases learned goes with their sets)
    c.settle()
    c.apply(*case.policies)
    wrong = []
    for pod, name, family, connects in case.steps:
        if pod == "sleep":
            time.sleep(float(connects))
            continue
        got = names.lookup_and_connect(pod, name, family)
        if not got.get("resolved"):
            wrong.append(f"{pod} → {name} (IPv{family}) did not resolve: {got}")
        elif bool(got.get("ok")) != connects:
            wrong.append(f"{pod} → {name} (IPv{family}) {got.get('addresses')}: {'connected' if got.get('ok') else 'refused'}, "
                         f"expected {'connected' if connects else 'refused'}")
    for pod, address, connects in case.direct:
        if names.direct(pod, address) != connects:
            wrong.append(f"{pod} → {address} directly: expected {'connected' if connects else 'refused'}")
    assert not wrong, "\n".join(wrong)
