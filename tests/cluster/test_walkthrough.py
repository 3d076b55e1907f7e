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


def test_walkthrough_on_ipv6_and_dual_stack_clusters() -> None:
    """The same walkthrough on two more clusters, up side by side: IPv6 single-stack (bridge,
    nftables: pods, Services, nodes and the agents' probes over IPv6 only) and dual-stack
    (ptp, iptables: every pod probed on both its addresses)."""
    from concurrent.futures import ThreadPoolExecutor

    from realcluster.cluster import down
    from realcluster.images import build_all
    from realcluster.layout import Layout
    from tests.cluster.conftest import fresh_layout, leftovers

    runs = {"ipv6": ("bridge", "nftables"), "dual": ("ptp", "iptables")}
    layouts = {family: Layout(fresh_layout(cni).name, cni, ip_family=family) for family, (cni, _) in runs.items()}

    def one(family: str) -> list[str]:
        lines: list[str] = []
        cluster = Cluster(layouts[family])
        try:
            cluster.up(say=lines.append)
            ok = walkthrough(cluster, runs[family][1], say=lines.append)
            # Each pod address is probed: IPv6 only, or both families (twice the pod probes).
            want = "20 probes" if family == "ipv6" else "36 probes"
            ok = ok and all(want in line for line in lines if line.startswith("no policy:"))
            return [] if ok else [f"{family}:", *lines]
        finally:
            down(layouts[family], say=lambda s: None)

    build_all(lambda s: None)  # once, before both clusters load them
    with ThreadPoolExecutor(len(runs)) as pool:
        failures = [line for result in pool.map(one, runs) for line in result]
    assert not failures, "\n".join(failures)
    assert not any(leftovers(lay) for lay in layouts.values())
