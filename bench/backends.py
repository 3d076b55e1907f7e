"""The two kernel backends side by side on the same policies: a programmed node (initial
programming, one event → committed, no-op syncs) and packets (first-packet cost,
established flows), each as a ratio to the no-firewall limit of the same invocation."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace

import firstpacket
import synthetic
from report import ms, spread, table

from harness.node_agent import NodeAgent
from policyd.dataplane.config import DispatchMode
from policyd.lab.netns import add_namespace, delete_namespaces

SHAPE = (10_000, 100, 90, 1_000)  # pods, namespaces, nodes, policies: node-0 gets ~110 local pods
VARIANTS = {"nftables": "policyd", "iptables": "policyd iptables"}  # backend → first-packet variant


@dataclass
class NodeFigures:
    backend: str
    local: int
    first_ops: int
    inits: list[float]
    events: list[float]
    noops: list[float]
    resyncs: list[float]  # complete listings (nftables: after another program's commit)
    resync_cpu: list[float]
    resync_rows: list[str]
    checks: list[float]  # the one-second drift check (Syncer.check), nothing changed
    chain: list[float]  # a policy added to a pod whose chain grows from 100 to 200 rules: event → committed


def timed(*steps) -> float:
    t = time.perf_counter()
    for step in steps:
        step()
    return time.perf_counter() - t


def relabelled(pods: list, i: int):
    """The i-th relabel event of a run: a pod moved to another app."""
    old = pods[(i * 37) % len(pods)]
    return replace(old, labels={**old.labels, "app": synthetic.APPS[(i * 7) % len(synthetic.APPS)]})


def unchanged_sync(agent, full: bool = False, rebuild: bool | None = None) -> None:
    """A sync that must find nothing to do (else the figure would time real work)."""
    assert agent.sync(full=full, rebuild=rebuild).ops == 0


def settle_deletions(agent) -> None:
    """Let the chains earlier syncs flushed reach their deletion (they wait a second after the
    flush, dataplane.ops.STALE_DELAY) before timing syncs that must find nothing to do."""
    due = agent.syncer.deletion_due()
    if due is not None:
        time.sleep(max(0.0, due - time.monotonic()) + 0.01)
        agent.sync()


def foreign_commit(agent, i: int) -> None:
    """Another program's nftables commit in the node's namespace (a table of its own added
    or removed): moves the ruleset generation, changes nothing of policyd's."""
    agent.nft("add" if i % 2 == 0 else "delete", "table", "inet", "pdbench-foreign")


def timed_noop_resyncs(agent, runs: int = 3, foreign: bool = False, rebuild: bool = True) -> tuple[list[float], list[float], int]:
    """Full resyncs with nothing changed: wall and CPU seconds of this process (libnftables
    runs in it; the iptables backend's tools are child processes, counted too), and how
    many listings read set elements. `foreign`: another program commits before each (not
    timed), so the kernel's generation has moved and the resync must list everything.
    `rebuild`: desired state rebuilt from the compiler and compared (the periodic resync's
    audit), else as kept (the full sync that follows a drift check's finding)."""
    import resource

    def cpu() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    walls, cpus = [], []
    backend = agent.syncer.backend
    settle_deletions(agent)
    listed = 0
    read = backend.read

    def counting_read(elements: bool = True):
        nonlocal listed
        listed += int(elements)
        return read(elements=elements)

    backend.read = counting_read
    try:
        for i in range(runs):
            if foreign:
                foreign_commit(agent, i)
            t, c = time.perf_counter(), cpu()
            unchanged_sync(agent, full=True, rebuild=rebuild)
            walls.append(time.perf_counter() - t)
            cpus.append(cpu() - c)
    finally:
        del backend.read
        if foreign and runs % 2:
            foreign_commit(agent, 1)
    return walls, cpus, listed


def node_figures(args, backend: str, iptables_api: str = "restore") -> NodeFigures:
    """The synthetic cluster programmed into a throwaway namespace (address dispatch), then
    pod relabels one at a time, each synced at once. `iptables_api` "libiptc": the iptables
    backend through bench/libiptc.py instead of iptables-legacy-restore."""
    prefix = f"pdb{uuid.uuid4().hex[:6]}"
    ns = f"{prefix}-node"
    add_namespace(ns)
    try:
        n_pods, n_ns, n_nodes, n_pol = SHAPE
        inits, events, noops = [], [], []
        for _ in range(2 if args.quick else 3):
            agent = NodeAgent(ns, "node-0", DispatchMode.ADDRESS, backend=backend)
            if iptables_api == "libiptc":
                from libiptc import IptcBackend

                from policyd.lab.netns import entered

                with entered(ns):
                    agent.backend = agent.syncer.backend = IptcBackend()
            agent.remove_all()
            nss = synthetic.namespaces(n_ns)
            pods = [synthetic.pod(i, n_ns, n_nodes) for i in range(n_pods)]
            t = time.perf_counter()
            agent.load(nss, pods, synthetic.policies(n_pol, n_ns))
            r = agent.sync()
            inits.append(time.perf_counter() - t)
        for i in range(100 if args.quick else 500):
            events.append(timed(lambda i=i: agent.compiler.upsert_pod(relabelled(pods, i)), agent.sync))
        settle_deletions(agent)
        for _ in range(50):
            noops.append(timed(lambda: unchanged_sync(agent)))
        rrows, resyncs, cpus = resync_rows(agent)
        agent.sync(full=True)  # the generation known again after resync_rows' foreign commits
        checks, moved, looks = [], [], agent.syncer.element_looks
        for _ in range(20):
            t = time.perf_counter()
            assert agent.check() == [], "the drift check must find nothing on an untouched node"
            checks.append(time.perf_counter() - t)
        for i in range(20 if backend == "nftables" else 0):
            foreign_commit(agent, i)
            t = time.perf_counter()
            assert agent.check() == [], "another table's commit is no drift"
            moved.append(time.perf_counter() - t)
            time.sleep(0.05)
        if moved:
            rrows.append(f"| drift check after another program's commit (every rule, the verdict maps; peer-set elements "
                         f"when within 5 % of the time: {agent.syncer.element_looks - looks} of {len(moved)}) | {ms(moved)} | — |")
        chain = chain_growth(agent, pods, 100 if args.quick else 200)
        return NodeFigures(backend, len(agent.compiler.plans), r.ops, inits, events, noops, resyncs, cpus, rrows, checks, chain)
    finally:
        delete_namespaces(prefix)


def chain_growth(agent, pods: list, n: int) -> list[float]:
    """One local pod relabelled to be selected alone, then `n` policies selecting it, each
    admitting one more port from one app: its ingress chain grows by one rule per policy
    (scenario 1's shape, in process). Event → committed for the second half (n/2 to n rules)."""
    from policyd.model.objects import NetworkPolicy, Peer, PolicyPort, PolicyRule
    from policyd.model.selectors import LabelSelector

    local = next(p for p in pods if p.node == "node-0")
    agent.compiler.upsert_pod(replace(local, labels={**local.labels, "bench-chain": "grow"}))
    agent.sync()
    out = []
    for k in range(n):
        pol = NetworkPolicy(local.namespace, f"bench-chain-{k}", LabelSelector.build({"bench-chain": "grow"}, None),
                            (PolicyRule((Peer(LabelSelector.build({"app": synthetic.APPS[0]}, None)),), (PolicyPort("TCP", 20000 + k),)),))
        t = timed(lambda pol=pol: agent.compiler.upsert_policy(pol), agent.sync)
        if k >= n // 2:
            out.append(t)
    return out


def resync_rows(agent, runs: int = 5) -> tuple[list[str], list[float], list[float]]:
    """No-op full resyncs (from `timed_noop_resyncs`) as rows of a `figure | measured | target`
    table: on a quiet node (nftables: the generation proves nothing changed, nothing is
    listed) and after another program's commit (everything listed and compared); with the
    latter's wall and CPU seconds."""
    backend = agent.kind
    kernel = "libnftables, in this process" if backend == "nftables" else "ipset and iptables-legacy-restore, child processes"
    rows = []
    if backend == "nftables":
        walls, cpus, listed = timed_noop_resyncs(agent, runs, rebuild=False)
        audited, _, listed_a = timed_noop_resyncs(agent, runs)
        rows += [
            f"| full resync with nothing changed, generation unmoved: wall (the kernel's ruleset generation proves nothing "
            f"changed: nothing listed; {listed + listed_a} listings in {2 * runs} resyncs) | {ms(walls)} | ≤ 50 ms |",
            f"| the same with the periodic resync's audit (desired state rebuilt from the compiler and compared) "
            f"| {ms(audited)} | — |"]
    walls, cpus, listed = timed_noop_resyncs(agent, runs, foreign=backend == "nftables")
    after = " after another program's nftables commit" if backend == "nftables" else ""
    return rows + [
        f"| full resync with nothing changed{after}: wall (desired state rebuilt and compared, complete listing, every rule "
        f"and element compared) | {ms(walls)} | {'—' if backend == 'nftables' else '≤ 50 ms'} |",
        f"| the same: CPU ({kernel}) | {ms(cpus)} | — |",
        f"| the same: listings that read set elements (element drift is repaired) | {listed} of {len(walls)} | all |",
    ], walls, cpus


CHECKED = {"nftables": "the ruleset generation, unmoved: nothing listed", "iptables": "saved lines and ipset entry counts, three processes"}


def node_rows(f: NodeFigures) -> list[str]:
    """The programmed-node figures as rows of a `figure | measured | target` table."""
    return [
        f"| initial programming (compile + render + one transaction) | {ms(f.inits)} | ≤ 2 s |",
        f"| one pod relabelled: event → committed transaction | {ms(f.events)} | ≤ 10 ms p99 |",
        f"| a policy added to a pod whose chain grows from {len(f.chain)} to {2 * len(f.chain)} policy rules: event → committed "
        f"| {ms(f.chain)} | ≤ 10 ms p99 |",
        f"| partial sync with nothing changed (no kernel call) | {ms(f.noops)} | ≤ 50 ms |",
        *f.resync_rows,
        f"| drift check with nothing changed (every second; {CHECKED[f.backend]}) | {ms(f.checks)} | — |",
    ]


def compare(args) -> list[str]:
    nodes = {b: node_figures(args, b) for b in VARIANTS}
    fp = firstpacket.measure(args, kinds=tuple(VARIANTS.values()))
    base = fp.conns[("no firewall", 0)]
    b50, b99, brate = (firstpacket.med([x[i] for x in base]) for i in range(3))
    n_pods, _, _, n_pol = SHAPE

    def both(label: str, fn) -> list[object]:
        return [label, *(fn(nodes[b]) for b in VARIANTS)]

    p = lambda xs, q: sorted(xs)[min(len(xs) - 1, int(len(xs) * q))] * 1e3  # noqa: E731
    node_table = [
        both("first transaction (operations)", lambda f: f"{f.first_ops:,}"),
        both("initial programming, median", lambda f: f"{firstpacket.med(f.inits) * 1e3:.0f} ms"),
        both("one pod relabelled: event → committed, p50", lambda f: f"{p(f.events, 0.5):.2f} ms"),
        both("the same, p99", lambda f: f"{p(f.events, 0.99):.2f} ms"),
        both(f"a policy added to a pod whose chain grows from {len(nodes['nftables'].chain)} to {2 * len(nodes['nftables'].chain)} "
             "policy rules: event → committed, p99", lambda f: f"{p(f.chain, 0.99):.2f} ms"),
        both("full resync with nothing changed (desired state rebuilt and compared, complete listing, rules compared), median",
             lambda f: f"{firstpacket.med(f.resyncs) * 1e3:.1f} ms"),
        both("the same, CPU (incl. child processes)", lambda f: f"{firstpacket.med(f.resync_cpu) * 1e3:.1f} ms"),
        both("drift check with nothing changed (every second), median", lambda f: f"{firstpacket.med(f.checks) * 1e3:.1f} ms"),
    ]
    conn_rows = []
    for (kind, n), rs in fp.conns.items():
        p50s, p99s, rates = [x[0] for x in rs], [x[1] for x in rs], [x[2] for x in rs]
        name = "no firewall" if kind == "no firewall" else ("iptables" if kind == "policyd iptables" else "nftables")
        conn_rows.append([name, n or "—", spread(p50s), spread(p99s), f"{firstpacket.med(p50s) - b50:+.1f} µs",
                          f"{firstpacket.med(p99s) - b99:+.1f} µs", f"{firstpacket.med(rates) / brate:.0%}"])
    fbase = fp.flows[("no firewall", 0)]
    btcp, budp = firstpacket.med([x[0] for x in fbase]), firstpacket.med([x[1] for x in fbase])
    flow_rows = []
    for (kind, n), rs in fp.flows.items():
        tcp, udp = [x[0] for x in rs], [x[1] for x in rs]
        name = "no firewall" if kind == "no firewall" else ("iptables" if kind == "policyd iptables" else "nftables")
        flow_rows.append([name, n or "—", spread(tcp, "{:.2f}"), f"{firstpacket.med(tcp) / btcp:.0%}", spread(udp, "{:,.0f}"),
                          f"{firstpacket.med(udp) / budp:.0%}"])
    first = {k: {n: firstpacket.med([x[0] for x in fp.conns[(v, n)]]) for n in firstpacket.SCALES} for k, v in VARIANTS.items()}
    lo, hi = firstpacket.SCALES[1], firstpacket.SCALES[-1]
    return [
        "The same compiled plan written by each backend: nftables (one libnftables transaction, verdict maps, interval and hash sets) "
        "and iptables (legacy iptables + ipset: `ipset restore`, then `iptables-legacy-restore --noflush` per family; dispatch chains "
        "with one rule per local pod; `hash:ip`, `hash:ip,port`, `hash:net` with `nomatch` for `except`).",
        "",
        f"### A programmed node ({n_pods:,} pods, {n_pol:,} policies; node-0 with {nodes['nftables'].local} local pods, address dispatch)",
        "",
        *table(["figure", "nftables", "iptables"], node_table),
        "",
        "### First packet and established flows",
        "",
        f"As in scenarios 5 and 6 (two pod namespaces on one routed node, {fp.seconds} s of connections per run, {fp.repeats} runs per "
        "variant, variants interleaved); the rows are the two backends enforcing the same policies.",
        "",
        *table(["backend", "pods", "p50 latency µs", "p99 latency µs", "Δp50 vs limit", "Δp99 vs limit", "connections/s vs limit"], conn_rows),
        "",
        f"p50 from {lo:,} to {hi:,} pods: nftables {first['nftables'][hi] - first['nftables'][lo]:+.1f} µs, "
        f"iptables {first['iptables'][hi] - first['iptables'][lo]:+.1f} µs.",
        "",
        *table(["backend", "pods", "TCP Gbit/s", "TCP vs limit", "UDP packets/s", "UDP vs limit"], flow_rows),
    ]


def cpu_seconds() -> float:
    """User + system CPU of this process and its finished children."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def iptables_apis(args) -> list[str]:
    """The iptables backend's two ways into the legacy filter tables, side by side on the
    same programmed node: `iptables-legacy-restore` child processes (the default) and
    libiptc in process (python-iptables). ipsets go through `ipset restore` in both."""
    figures, cpu = {}, {}
    for api in ("restore", "libiptc"):
        c = cpu_seconds()
        figures[api] = node_figures(args, "iptables", iptables_api=api)
        cpu[api] = cpu_seconds() - c
    n_pods, _, _, n_pol = SHAPE
    f = figures["restore"]
    rows = [
        ["initial programming (compile + render + one transaction), median", *(ms(figures[a].inits) for a in figures)],
        ["one pod relabelled: event → committed", *(ms(figures[a].events) for a in figures)],
        ["full resync with nothing changed, complete listing", *(ms(figures[a].resyncs) for a in figures)],
        ["the same: CPU incl. child processes", *(ms(figures[a].resync_cpu) for a in figures)],
        ["CPU of the whole run (programming ×3, events, resyncs, checks; incl. children)", *(f"{cpu[a]:.1f} s" for a in figures)],
    ]
    return [
        f"Same synthetic cluster ({n_pods:,} pods, {n_pol:,} policies), node-0 with {f.local} local pods, address dispatch, legacy "
        f"iptables + ipset in a throwaway namespace; first transaction {f.first_ops:,} operations. Both paths send the same "
        "transaction (the kernel test tests/kernel/test_libiptc.py checks they leave identical tables).",
        "",
        *table(["figure", "iptables-legacy-restore (default)", "libiptc in process (python-iptables)"], rows),
    ]
