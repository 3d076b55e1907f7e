"""ClusterNetworkPolicy domainNames on real packets: a real DNS server (CoreDNS, in a pod's
namespace on node-2) answers node-1's pods; node-1's agent holds each answer on its NFQUEUE
(nftables: the xtables target through nft_compat; iptables: -j NFQUEUE) until the answer's
addresses are in the policy's set, with the record's TTL. Both topologies, both backends:
the first connection after a lookup is allowed; an unlisted name, or an address no allowed
name answered, is refused; after the TTL it is refused again until the next lookup; what was
learned survives an agent restart; with no agent listening, fail-open lets answers pass
unlearned and fail-closed drops them. (Routed with nftables, bridged with iptables: each
backend and each topology once.)"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import replace
from pathlib import Path

import pytest

from harness.node_agent import NodeAgent
from policyd.dataplane.config import Fqdn
from policyd.lab import dns as labdns
from policyd.lab.families import v6_for
from policyd.lab.netns import entered
from policyd.lab.topology import ask
from policyd.names.learner import Learner, Limits, QueueReader
from policyd.names.queue import NfQueue
from policyd.names.scope import PlanScope
from tests.kernel.conftest import KernelCluster, kernel_cluster, parse

ZONE = """$TTL 2
$ORIGIN example.test.
api   IN A 198.51.100.10
www   IN CNAME edge.cdn.example.test.
other IN A 198.51.100.30
$ORIGIN cdn.example.test.
edge  IN A 198.51.100.20
"""
DNS_POD = """
apiVersion: v1
kind: Pod
metadata: {name: lab-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec: {nodeName: node-2, containers: [{name: c}]}
"""
POLICY = """
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: f1-names}
spec:
  tier: Admin
  priority: 10
  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: frontend}}}}
  egress:
  - action: Accept
    to: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {k8s-app: kube-dns}}}}]
    protocols: [{udp: {destinationPort: {number: 53}}}, {tcp: {destinationPort: {number: 53}}}]
  - action: Accept
    to: [{domainNames: ["api.example.test", "www.example.test"]}]
  - action: Deny
    to: [{networks: ["0.0.0.0/0", "::/0"]}]
"""
QUEUE = 5301


class Names:
    """The DNS pod, the external hosts and the learner around a KernelCluster."""

    def __init__(self, cluster: KernelCluster, tmp: Path, fail_open: bool = True, learn: bool = True, zone: str = ZONE) -> None:
        self.cluster = cluster
        m = parse(DNS_POD)
        known = {ns.name for ns in cluster.namespaces}
        for ns in m.namespaces:
            cluster.agent.compiler.upsert_namespace(ns)
        cluster.namespaces = [*cluster.namespaces, *(ns for ns in m.namespaces if ns.name not in known)]
        pod = m.pods[0]
        v4 = ipaddress.IPv4Address("10.244.1.53")
        pod = replace(pod, ips=(v4, v6_for(v4)))
        self.dns_ip, self.dns_ip6 = str(v4), str(v6_for(v4))
        cluster.topo.add_pod(pod, [], [])
        cluster.topo.wait_ready(handles=[cluster.topo.pod(pod.key)])
        cluster.pods[pod.name] = pod
        cluster.agent.compiler.upsert_pod(pod)
        zone_file = tmp / "zone.db"
        zone_file.write_text(zone)
        self.coredns = labdns.start(cluster.topo.pod(pod.key).netns, tmp / "dns", labdns.read_zone(str(zone_file)))
        labdns.wait_serving(cluster.topo.pod(pod.key).netns, [self.dns_ip], self.coredns)
        read = labdns.read_zone(str(zone_file))
        _, self.external = cluster.topo.add_external(list(read.addresses), [80], [])
        self.reader = self.start_learner(fail_open) if learn else None
        cluster.sync()

    def start_learner(self, fail_open: bool) -> QueueReader:
        agent = self.cluster.agent
        with entered(agent.netns):
            scope = PlanScope(agent.compiler, agent.backend.renderer(agent.syncer.cfg).layout)
            learner = Learner(scope, agent.backend.names_writer(), fail_open, Limits(min_ttl=1))
            reader = QueueReader(learner, lambda: NfQueue(QUEUE, fail_open))
            reader.start()
        return reader

    def lookup_and_connect(self, src: str, name: str, family: int = 4) -> dict:
        """As a pod's resolver does: a query over UDP (TCP when the answer is truncated) to
        the DNS pod's address of `family`, for A or AAAA; then TCP 80 to the first address."""
        return ask(self.cluster.topo.pod(self.cluster.pods[src].key).control,
                   {"name": name, "server": self.dns_ip if family == 4 else self.dns_ip6, "family": family, "protocol": "TCP",
                    "port": 80, "timeout": 0.5})

    def direct(self, src: str, address: str) -> bool:
        return self.cluster.topo.probe(self.cluster.pods[src].key, address, "TCP", 80, 0.5)

    def close(self) -> None:
        if self.reader is not None:
            self.reader.stop()
        for p in (self.coredns, self.external):
            p.kill()
            p.wait()


@pytest.fixture(params=["routed-nftables", "bridge-iptables"])  # (the conformance-style cases run these two too)
def names(request, tmp_path):
    with kernel_cluster(request.param, fqdn=Fqdn(QUEUE, True)) as cluster:
        n = Names(cluster, tmp_path)
        try:
            yield n
        finally:
            n.close()


def test_a_name_is_admitted_from_the_first_connection_after_its_lookup(names):
    c = names.cluster
    c.apply(POLICY)
    assert not names.direct("f1", "198.51.100.10"), "before any lookup, the address is not admitted"
    got = names.lookup_and_connect("f1", "api.example.test")
    assert got["resolved"] and got["addresses"] == ["198.51.100.10"] and got["ok"], got
    www = names.lookup_and_connect("f1", "www.example.test")
    assert www["ok"] and www["addresses"] == ["198.51.100.20"], "through the CNAME chain"
    other = names.lookup_and_connect("f1", "other.example.test")
    assert other["resolved"] and not other["ok"], "an unlisted name resolves and is refused"
    assert not names.direct("f1", "198.51.100.30"), "an address no allowed name answered"
    assert names.lookup_and_connect("u1", "other.example.test")["ok"], "a pod the policy does not select is not affected"
    time.sleep(3.2)  # the answer's TTL (2 s) is over
    assert not names.direct("f1", "198.51.100.10"), "refused again after the TTL, without a new lookup"
    assert names.lookup_and_connect("f1", "api.example.test")["ok"]
    status = names.reader.status()
    assert status["learned"] >= 3 and status["failures"] == 0, status


def test_learned_addresses_outlive_an_agent_restart_and_leave_with_the_policy(names):
    c = names.cluster
    c.apply(POLICY)
    assert names.lookup_and_connect("f1", "api.example.test")["ok"]
    names.reader.stop()
    old = c.agent
    c.agent = NodeAgent(old.netns, "node-1", old.syncer.cfg.mode, backend=old.kind, cfg=old.syncer.cfg)
    c.agent.load(c.namespaces, c.pods.values(), c.policies.values(), c.cluster_policies.values())
    first = c.sync()
    assert first.ops == 0, "a new agent adopts the table, learned elements included"
    assert names.direct("f1", "198.51.100.10"), "still learned"
    c.apply()
    c.settle()
    assert "fq-" not in c.agent.dump() and "-fq-" not in c.agent.dump(), "the policy's sets went with it"


@pytest.mark.parametrize("fail_open", [True, False])
def test_with_no_agent_listening_answers_pass_unlearned_or_are_dropped(tmp_path, fail_open):
    with kernel_cluster("routed-nftables", fqdn=Fqdn(QUEUE, fail_open)) as cluster:
        n = Names(cluster, tmp_path, fail_open=fail_open, learn=False)
        try:
            cluster.apply(POLICY)
            got = n.lookup_and_connect("f1", "api.example.test")
            if fail_open:
                assert got["resolved"] and not got["ok"], "the answer passed, its address was not learned"
            else:
                assert not got["resolved"], "the answer was dropped"
        finally:
            n.close()

