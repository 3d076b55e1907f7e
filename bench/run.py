"""policyd benchmarks: engine (pure) and dataplane (real nftables in a throwaway network
namespace). Prints a Markdown report; `--write` puts it into docs/benchmarks.md.

    .venv/bin/python bench/run.py [--quick] [--write]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import firstpacket  # noqa: E402
import synthetic  # noqa: E402

from policyd.compile.engine import Compiler, compile_all  # noqa: E402


def ms(xs: list[float]) -> str:
    xs = sorted(xs)
    p99 = xs[min(len(xs) - 1, int(len(xs) * 0.99))]
    return f"median {statistics.median(xs) * 1e3:.2f} ms (min {xs[0] * 1e3:.2f}, p99 {p99 * 1e3:.2f}, max {xs[-1] * 1e3:.2f}; n={len(xs)})"


def timed_noop_resyncs(agent, runs: int = 3) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        assert agent.sync(full=True).ops == 0
        out.append(time.perf_counter() - t)
    return out


def build(n_pods: int, n_ns: int, n_nodes: int, n_pol: int) -> tuple[Compiler, list, float]:
    nss = synthetic.namespaces(n_ns)
    pods = [synthetic.pod(i, n_ns, n_nodes) for i in range(n_pods)]
    pols = synthetic.policies(n_pol, n_ns)
    t = time.perf_counter()
    c = compile_all("node-0", nss, pods, pols)
    return c, pods, time.perf_counter() - t


def engine(args) -> list[str]:
    n_pods, n_ns, n_nodes, n_pol = (10_000, 100, 100, 1_000)
    runs = 2 if args.quick else 5
    fulls = []
    for _ in range(runs):
        c, pods, secs = build(n_pods, n_ns, n_nodes, n_pol)
        fulls.append(secs)
    adds, relabels = [], []
    events = 200 if args.quick else 1000
    for i in range(events):
        p = synthetic.pod(n_pods + i, n_ns, n_nodes)
        t = time.perf_counter()
        c.upsert_pod(p)
        c.take_changes()
        adds.append(time.perf_counter() - t)
        old = pods[(i * 37) % n_pods]
        t = time.perf_counter()
        c.upsert_pod(replace(old, labels={**old.labels, "app": synthetic.APPS[(i * 7) % len(synthetic.APPS)]}))
        c.take_changes()
        relabels.append(time.perf_counter() - t)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return [
        f"Synthetic cluster: {n_pods:,} pods in {n_ns} namespaces on {n_nodes} nodes, {n_pol:,} policies; compiled for node-0 ({len(c.plans)} local pods, {len(c.sets)} shared sets).",
        "",
        "| figure | measured | target |",
        "|---|---|---|",
        f"| full compile for one node | {ms(fulls)} | ≤ 1 s |",
        f"| one pod added, incremental | {ms(adds)} | ≤ 2 ms median |",
        f"| one pod relabelled, incremental | {ms(relabels)} | ≤ 2 ms median |",
        f"| peak RSS of the benchmark process | {rss:.0f} MB | ≤ 250 MB |",
    ]


def dataplane(args) -> list[str]:
    from policyd.lab.netns import add_namespace, delete_namespaces
    from policyd.lab.agent import NodeAgent
    from policyd.nft.render import DispatchMode

    prefix = f"pdb{uuid.uuid4().hex[:6]}"
    ns = f"{prefix}-node"
    add_namespace(ns)
    try:
        n_pods, n_ns, n_nodes, n_pol = (10_000, 100, 90, 1_000)
        inits, events, noops = [], [], []
        for _ in range(2 if args.quick else 3):
            agent = NodeAgent(ns, "node-0", DispatchMode.ADDRESS)
            from policyd.lab.netns import sh

            sh("nft", "delete", "table", "inet", "policyd", ns=ns, check=False)
            nss = synthetic.namespaces(n_ns)
            pods = [synthetic.pod(i, n_ns, n_nodes) for i in range(n_pods)]
            t = time.perf_counter()
            agent.load(nss, pods, synthetic.policies(n_pol, n_ns))
            r = agent.sync()
            inits.append(time.perf_counter() - t)
        local = len(agent.compiler.plans)
        for i in range(100 if args.quick else 500):
            old = pods[(i * 37) % n_pods]
            t = time.perf_counter()
            agent.compiler.upsert_pod(replace(old, labels={**old.labels, "app": synthetic.APPS[(i * 7) % len(synthetic.APPS)]}))
            agent.sync()
            events.append(time.perf_counter() - t)
        for _ in range(50):
            t = time.perf_counter()
            assert agent.sync().ops == 0
            noops.append(time.perf_counter() - t)
        fulls = timed_noop_resyncs(agent)
        return [
            f"Same synthetic cluster shape ({n_pods:,} pods, {n_pol:,} policies), node-0 with {local} local pods, address dispatch, real kernel (libnftables) in a throwaway namespace; first transaction {r.ops:,} operations.",
            "",
            "| figure | measured | target |",
            "|---|---|---|",
            f"| initial programming (compile + render + one transaction) | {ms(inits)} | ≤ 2 s |",
            f"| one pod relabelled: event → committed transaction | {ms(events)} | ≤ 10 ms p99 |",
            f"| partial sync with nothing changed (no kernel call) | {ms(noops)} | ≤ 50 ms |",
            f"| full resync with nothing changed (terse listing: no set elements) | {ms(fulls)} | ≤ 50 ms |",
        ]
    finally:
        delete_namespaces(prefix)


def large_sets(args) -> list[str]:
    """One policy whose peer set holds every pod of a 100k-pod cluster: element churn."""
    from policyd.lab.agent import NodeAgent
    from policyd.lab.netns import add_namespace, delete_namespaces
    from policyd.model.objects import NetworkPolicy, Peer, PolicyRule
    from policyd.model.selectors import MATCH_ALL
    from policyd.nft.render import DispatchMode

    prefix = f"pdb{uuid.uuid4().hex[:6]}"
    ns = f"{prefix}-node"
    add_namespace(ns)
    try:
        n_pods, n_ns, n_nodes = 100_000, 100, 1_000
        nss = synthetic.namespaces(n_ns)
        pods = [synthetic.pod(i, n_ns, n_nodes) for i in range(n_pods)]
        everyone = Peer(MATCH_ALL, MATCH_ALL)
        pols = [NetworkPolicy(f"ns{i}", "allow-all-pods", MATCH_ALL, (PolicyRule((everyone,), ()),)) for i in range(n_ns)]
        agent = NodeAgent(ns, "node-0", DispatchMode.ADDRESS)
        agent.load(nss, [], pols)
        agent.sync()
        t0 = time.perf_counter()
        agent.load([], pods[: n_pods - 10_000], [])
        t1 = time.perf_counter()
        r = agent.sync()
        compile_s, load = t1 - t0, time.perf_counter() - t1
        agent.load([], pods[n_pods - 10_000 :], [])
        t = time.perf_counter()
        batch = agent.sync()
        batch_s = time.perf_counter() - t
        adds, dels = [], []
        for i in range(100 if args.quick else 500):
            p = synthetic.pod(n_pods + i, n_ns, n_nodes)
            t = time.perf_counter()
            agent.compiler.upsert_pod(p)
            agent.sync()
            adds.append(time.perf_counter() - t)
            t = time.perf_counter()
            agent.compiler.delete_pod(p.key)
            agent.sync()
            dels.append(time.perf_counter() - t)
        fulls = timed_noop_resyncs(agent)
        return [
            f"{n_pods:,} pods on {n_nodes:,} nodes; every namespace has a policy allowing ingress from all pods, so one shared peer set holds {n_pods:,} addresses. Real kernel, throwaway namespace.",
            "",
            "| figure | measured | target |",
            "|---|---|---|",
            f"| compile {n_pods - 10_000:,} pod events (engine only) | {compile_s * 1e3:.0f} ms | — |",
            f"| load them: render + diff + one transaction of {r.ops:,} operations | {load * 1e3:.0f} ms | ≤ 400 ms |",
            f"| a batch of 10,000 more pods: render + diff + transaction ({batch.ops:,} operations) | {batch_s * 1e3:.0f} ms | ≤ 40 ms |",
            f"| one pod added: event → committed | {ms(adds)} | ≤ 3 ms p99 |",
            f"| one pod deleted: event → committed | {ms(dels)} | ≤ 3 ms p99 |",
            f"| full resync with nothing changed (terse listing) | {ms(fulls)} | ≤ 50 ms |",
        ]
    finally:
        delete_namespaces(prefix)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--write", action="store_true", help="write docs/benchmarks.md")
    args = ap.parse_args()
    cmd = "scripts/setup.sh && .venv/bin/python bench/run.py" + (" --quick" if args.quick else "") + " --write"
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `{cmd}` on {time.strftime('%Y-%m-%d')}.",
        f"Machine: {os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}.",
        "Each figure: median with min, p99 and max over the repeated runs shown (n).",
        "",
        "## Policy engine (pure compile, issue 2)",
        "",
        *engine(args),
        "",
        "## nftables dataplane (issue 3)",
        "",
        *dataplane(args),
        "",
        "### Large peer sets",
        "",
        *large_sets(args),
        "",
        "### First-packet cost",
        "",
        *firstpacket.first_packet(args),
        "",
        "The no-firewall run loads no nftables table, so conntrack is not active in it; every other row pays for conntrack too (compare the linear reference at 100 rules), which is most of policyd's constant Δ. What matters is the trend: policyd's per-packet work is a verdict-map lookup and hash/interval set lookups, so it stays flat from 100 to 10,000 pods, while the linear rules grow with every peer.",
        "",
        "Not measured yet (the benchmark issue): established-flow throughput, policy create → enforced",
        "through the agent under load, pod churn at 50/200 events/s, no loss under churn, a plot.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        Path(__file__).resolve().parents[1].joinpath("docs", "benchmarks.md").write_text(text)


if __name__ == "__main__":
    main()
