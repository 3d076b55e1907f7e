"""Chaos on the session's two real clusters at once (bridge/nftables, ptp/iptables;
realcluster/chaos.py): a prober in a client pod opens a connection to an allowed and to a
denied server every 20 ms while, one at a time, the agent is killed with `kill -9` during
pod churn, `helm upgrade` rolls the DaemonSet to a new image tag, kube-apiserver restarts,
etcd stops for 30 s, the kubelet restarts, and policyd's ruleset and then a pod's chain are
removed behind its back on the servers' node.

No denied probe may connect during any fault outside policyd's own kernel objects; when
those are removed, the node is open until the one-second drift check has repaired them,
and that must take no more than two seconds (a failure shows node-2's agent log, which says
when it found and repaired what). `scripts/cluster.sh chaos --write` records the same table
in docs/reliability.md, with etcd down for 60 s."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from realcluster.chaos import CONFIGS, FaultResult, on_cluster, table
from realcluster.cluster import Cluster

OPEN_AT_MOST = 2.0  # seconds a removed ruleset may stay missing: the check's period and a full sync
ETCD_DOWN = 30.0  # seconds: long enough for every watch to fail and retry (the documented run: 60)


def test_chaos(clusters: dict[str, Cluster]) -> None:
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        print(line, flush=True)  # progress, with -s

    with ThreadPoolExecutor(len(clusters)) as pool:
        runs = {CONFIGS[cni]: pool.submit(on_cluster, c, say, ETCD_DOWN) for cni, c in clusters.items()}
        results: dict[str, list[FaultResult]] = {backend: f.result() for backend, f in runs.items()}
    report = "\n".join(table(results) + lines)
    print("\n" + report)
    for backend, rs in results.items():
        assert len(rs) == 7, report
        for r in rs:
            assert not r.error, f"{backend}: {r.fault}: {r.error}\n{report}"
            if r.opens_node:
                assert r.open_for <= OPEN_AT_MOST, f"{backend}: {r.fault}: open for {r.open_for:.2f} s\n{report}\nnode-2's agent:\n{r.agent_log}"
            else:
                assert r.held, f"{backend}: {r.fault}: {r.denied_connected} denied probes connected\n{report}"
            assert r.allowed > 0 and r.denied > 0, f"{backend}: {r.fault}: the prober did not run\n{report}"
