"""The README's walkthrough, automated, on a real cluster: the chart's DaemonSet (the image
built from the Dockerfile, the chart's RBAC and securityContext) enforcing
allow-frontend-to-backend between real pods on two nodes, probed with ping and TCP through
`kubectl exec`, to pod IPs on the same node and across nodes and to a Service ClusterIP
(kube-proxy's DNAT runs before policyd's hook); then `helm uninstall` and `policyd cleanup`
on every node leave no policyd object in the kernel. Both CNI styles × both backends."""

from __future__ import annotations

import pytest

from realcluster.cluster import Cluster
from realcluster.walkthrough import walkthrough


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_walkthrough(cluster: Cluster, backend: str) -> None:
    lines: list[str] = []
    assert walkthrough(cluster, backend, say=lines.append), "\n".join(lines)
