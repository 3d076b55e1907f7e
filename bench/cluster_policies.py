"""What ClusterNetworkPolicies cost: compile time, and the first packet of a pod that no
ClusterNetworkPolicy selects, with 1,000 of them in the cluster against none.

Cluster: the synthetic shape of the first-packet bench at 1,000 pods (20 namespaces, 100
nodes, 100 NetworkPolicies) plus N synthetic ClusterNetworkPolicies (bench/synthetic.py:
both tiers, all three actions, namespace/pod/network peers, ports and ranges; subjects
select namespaces by `team`, so node-0's own synthetic pods are subjects of hundreds of them).
The measured client and server live in namespace `bench`, which has no `team` label: no
CNP selects them, so their first packet must cost what it costs with no CNP at all. A third
variant adds 10 Admin CNPs that do select them (rules whose peers never match the pair),
for the cost of a pod's own tier rules.
"""

from __future__ import annotations

import statistics
import time

import firstpacket
import synthetic
from report import ms, spread, table

from policyd.compile.engine import compile_all
from policyd.model.objects import Action, ClusterNetworkPolicy, CNPPeer, CNPPort, CNPRule, Tier
from policyd.model.selectors import LabelSelector

N_PODS, N_NS, N_NODES = 1_000, 20, 100
N_CNP = 1_000


def own_rules(n: int) -> list[ClusterNetworkPolicy]:
    """n Admin CNPs selecting the bench namespace, each rule's peer the pods of synthetic
    namespaces (team a, never the pair's): every packet of the pair walks n rules each way
    (a set lookup each), then falls through. (A peer that matches no pod at all would be
    compiled away.)"""
    bench = LabelSelector.build({"kubernetes.io/metadata.name": "bench"}, None)
    other = CNPPeer(namespace_selector=LabelSelector.build({"team": "a"}, None))
    return [ClusterNetworkPolicy(f"own{i}", Tier.ADMIN, i, bench, LabelSelector(),
                                 (CNPRule(Action.DENY, (other,), (CNPPort("TCP", 80),), "never"),),
                                 (CNPRule(Action.DENY, (other,), (CNPPort("TCP", 80),), "never"),)) for i in range(n)]


def compile_lines(args) -> list[str]:
    runs = 3 if args.quick else 7
    nss, pods, pols = synthetic.namespaces(N_NS), [synthetic.pod(i, N_NS, N_NODES) for i in range(N_PODS)], synthetic.policies(N_PODS // 10, N_NS)
    cnps = synthetic.cluster_policies(N_CNP)
    rows = []
    for label, extra in (("none", []), (f"{N_CNP:,}", cnps)):
        fulls = []
        for _ in range(runs):
            t = time.perf_counter()
            c = compile_all("node-0", nss, pods, pols, extra)
            fulls.append(time.perf_counter() - t)
        local = len(c.plans)
        tier_rules = sum(len(d.admin) + len(d.baseline) for p in c.plans.values() for d in (p.ingress, p.egress) if d is not None)
        events, pod_events = [], []
        for i in range(50 if args.quick else 200):
            cnp = synthetic.cluster_policies(N_CNP + 1, seed=3 + i)[-1] if extra else synthetic.cluster_policies(1, seed=3 + i)[0]
            t = time.perf_counter()
            c.upsert_cluster_policy(cnp)
            c.take_changes()
            events.append(time.perf_counter() - t)
            t = time.perf_counter()
            c.upsert_pod(synthetic.pod(N_PODS + i, N_NS, N_NODES))
            c.take_changes()
            pod_events.append(time.perf_counter() - t)
        rows.append([label, spread([x * 1e3 for x in fulls], "{:.1f}", " ms"), f"{tier_rules:,}", ms(events), ms(pod_events)])
    return [f"{N_PODS:,} pods in {N_NS} namespaces on {N_NODES} nodes, {N_PODS // 10} NetworkPolicies, compiled for node-0 "
            f"({local} local pods); ClusterNetworkPolicies from bench/synthetic.py. Full compile: {runs} runs, median (min–max).",
            "",
            *table(["ClusterNetworkPolicies", "full compile", "tier rules in node-0's plans", "one CNP created or updated",
                    "one pod created"], rows)]


def first_packet_lines(args) -> list[str]:
    seconds, repeats = (1.5, 2) if args.quick else (3.0, 5)
    variants = {"no ClusterNetworkPolicy": [], f"{N_CNP:,} selecting other pods": synthetic.cluster_policies(N_CNP),
                f"{N_CNP:,} + 10 selecting the pair": synthetic.cluster_policies(N_CNP) + own_rules(10)}
    results: dict[str, list[tuple[float, float, float]]] = {v: [] for v in variants}
    rules: dict[str, int] = {}
    with firstpacket.pair("c") as it:
        for _ in range(repeats):
            for name, cnps in variants.items():  # interleaved, so drift hits every variant alike
                agent = it.agent(N_PODS, cnps=cnps, n_ns=N_NS, n_nodes=N_NODES)
                rules[name] = sum(1 for line in agent.nft("list", "table", "inet", "policyd").splitlines()
                                  if line.startswith("\t\t") and not line.strip().startswith(("type ", "flags ", "elements", "policy ")))
                results[name].append(firstpacket.run_client(it.exe, it.client_ns, it.server_ip, seconds))
    base = statistics.median(x[0] for x in results["no ClusterNetworkPolicy"])
    rows = [[name, f"{rules[name]:,}", spread([x[0] for x in rs]), spread([x[1] for x in rs]), spread([x[2] for x in rs], "{:,.0f}"),
             f"{statistics.median(x[0] for x in rs) - base:+.1f} µs"] for name, rs in results.items()]
    return [f"The first-packet bench's client and server (namespace `bench`, node-0, routed, interface dispatch, nftables) in the "
            f"cluster above; one TCP connection at a time for {seconds} s, {repeats} runs per variant, variants interleaved, each cell "
            "median over runs (min–max).",
            "",
            *table(["ClusterNetworkPolicies", "rules in node-0's table", "p50 latency µs", "p99 latency µs", "connections/s",
                    "Δp50 vs none"], rows)]


def measure(args) -> list[str]:
    return ["### Compile", "", *compile_lines(args), "", "### First packet", "", *first_packet_lines(args), "",
            "A pod that no ClusterNetworkPolicy selects pays nothing for them: its chains hold its own rules only, and the verdict-map "
            "dispatch reaches them in one lookup whatever the table holds. A selected pod walks its own tier rules in priority order "
            "(the API's semantics are ordered); their peers are the same content-addressed set lookups as NetworkPolicy peers."]
