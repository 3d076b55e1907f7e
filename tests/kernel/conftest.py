"""Real nftables, real packets: a 2-node topology in throwaway network namespaces with the
agent enforcing on node-1 (pods on node-2 are remote peers). Both CNI styles are tested:
routed (`cali*`, interface dispatch) and bridge (`cni0`, address dispatch). Namespaces carry
a per-run prefix and are removed even when a test fails."""

from __future__ import annotations

import ipaddress
import textwrap
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import pytest

from harness.node_agent import NodeAgent
from policyd.dataplane.config import DispatchMode, Fqdn, RenderConfig
from policyd.dataplane.droplog import DropLog
from policyd.lab.families import v6_for
from policyd.lab.netns import delete_namespaces, entered
from policyd.lab.topology import Topology
from policyd.model.manifests import Manifests, load_documents

PODS = """
apiVersion: v1
kind: Namespace
metadata: {name: other, labels: {team: ops}}
"""
LAYOUT = [  # name, namespace, app label, node, http port
    ("f1", "default", "frontend", "node-1", 80),
    ("f2", "default", "frontend", "node-2", 80),
    ("b1", "default", "backend", "node-1", 80),
    ("b2", "default", "backend", "node-2", 80),
    ("u1", "default", "unallowed", "node-1", 80),
    ("alt", "default", "backend", "node-1", 8080),
    ("o1", "other", "ops", "node-1", 80),
]
for name, ns, app, node, http in LAYOUT:
    PODS += f"""---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}}}}}
spec:
  nodeName: {node}
  containers:
  - name: c
    ports:
    - {{name: http, containerPort: {http}}}
    - {{containerPort: 81}}
    - {{name: dns, containerPort: 53, protocol: UDP}}
    - {{containerPort: 80, protocol: UDP}}
    - {{name: sctp, containerPort: 80, protocol: SCTP}}
"""

# The policy most kernel tests start from: backend pods accept frontend pods only.
ALLOW_FRONTEND = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-frontend, namespace: default}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: frontend}}}]
"""


def parse(*docs: str) -> Manifests:
    m = Manifests()
    for i, d in enumerate(docs):
        load_documents(f"inline{i}", textwrap.dedent(d), m)
    assert not m.problems, m.problems
    return m.with_implicit_namespaces()


class KernelCluster:
    def __init__(self, topo: Topology, mode: DispatchMode, backend: str = "nftables", drop_log: DropLog | None = None,
                 counters: bool = False, fqdn: Fqdn | None = None, revoke_mark: int | None = None) -> None:
        self.backend = backend
        self.topo = topo
        m = parse(PODS)
        cidrs = {"node-1": ipaddress.ip_network("10.244.0.0/24"), "node-2": ipaddress.ip_network("10.244.1.0/24")}
        for name, cidr in cidrs.items():
            topo.add_node(name, cidr)
        self.pods = {}
        next_host = {n: 10 for n in cidrs}
        for pod in m.pods:
            v4 = cidrs[pod.node].network_address + next_host[pod.node]
            next_host[pod.node] += 1
            pod = replace(pod, ips=(v4, v6_for(v4)))
            self.pods[pod.name] = pod
            tcp = sorted({p.port for p in pod.ports if p.protocol == "TCP"})
            udp = sorted({p.port for p in pod.ports if p.protocol == "UDP"})
            topo.add_pod(pod, tcp, udp)
        topo.wait_ready()
        self.namespaces = m.namespaces
        self.agent = NodeAgent(topo.nodes["node-1"].netns, "node-1", mode, backend=backend,
                               cfg=RenderConfig(mode=mode, drop_log=drop_log, counters=counters, fqdn=fqdn, revoke_mark=revoke_mark))
        self.agent.load(m.namespaces, self.pods.values(), [])
        self.policies: dict[str, object] = {}
        self.cluster_policies: dict[str, object] = {}
        self.sync()

    def sync(self, full: bool = False):
        result = self.agent.sync(full)
        assert self.agent.syncer.divergences == 0, "the incremental desired state differs from a rebuild"
        return result

    def settle(self):
        """A sync as if the chains earlier syncs flushed had waited for their deletion."""
        from tests.helpers import settle

        with entered(self.agent.netns):
            return settle(self.agent.syncer)

    def apply(self, *docs: str):
        """Replace the policy set (NetworkPolicies and ClusterNetworkPolicies) with these
        manifests and sync."""
        m = parse(*docs)
        new = {p.key: p for p in m.policies}
        new_cnps = {c.name: c for c in m.cluster_policies}
        for key in set(self.policies) - set(new):
            self.agent.compiler.delete_policy(key)
        for name in set(self.cluster_policies) - set(new_cnps):
            self.agent.compiler.delete_cluster_policy(name)
        for pol in new.values():
            self.agent.compiler.upsert_policy(pol)
        for cnp in new_cnps.values():
            self.agent.compiler.upsert_cluster_policy(cnp)
        self.policies, self.cluster_policies = new, new_cnps
        return self.sync()

    def ip(self, name: str, family: int = 4) -> str:
        return str(next(a for a in self.pods[name].ips if a.version == family))

    def can(self, src: str, dst: str, protocol: str = "TCP", port: int = 80, family: int = 4) -> bool:
        return self.topo.probe(self.pods[src].key, self.ip(dst, family), protocol, port, timeout=0.4)


from policyd.backends import BACKENDS as BACKENDS  # noqa: E402

VARIANTS = [f"{t}-{b}" for t in ("routed", "bridge") for b in BACKENDS]


@contextmanager
def kernel_cluster(variant: str, drop_log: DropLog | None = None, counters: bool = False,
                   fqdn: Fqdn | None = None, revoke_mark: int | None = None) -> Iterator[KernelCluster]:
    """`<topology>-<backend>`, torn down even when the test fails."""
    topology, backend = variant.split("-")
    prefix = f"pdk{uuid.uuid4().hex[:6]}"
    mode = DispatchMode.INTERFACE if topology == "routed" else DispatchMode.ADDRESS
    topo = Topology(prefix, topology)
    try:
        yield KernelCluster(topo, mode, backend, drop_log, counters, fqdn, revoke_mark)
    finally:
        topo.teardown()
        delete_namespaces(prefix + ".")


@pytest.fixture(params=VARIANTS)
def cluster(request):
    """Every kernel test runs on both topologies and both backends."""
    with kernel_cluster(request.param) as c:
        yield c
