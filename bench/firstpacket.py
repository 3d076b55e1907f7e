"""First-packet cost: new TCP connections between two pod namespaces on one node, with
no firewall (the limit), with policyd's ruleset for clusters of 100, 1,000 and 10,000 pods,
and with a linear-rule reference (one rule per allowed peer, the shape iptables-style
agents produce, the measured client's rule last).

The client (bench/connbench.c, compiled on first use) opens one connection at a time:
connect → one byte → EOF. Every connection is new to conntrack, so its SYN walks the
whole ruleset once: the client's egress chain and the server's ingress chain for
policyd, up to N rules for the reference.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import statistics
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import synthetic
from report import spread, table

from harness.node_agent import NodeAgent
from policyd.dataplane.config import DispatchMode, RenderConfig
from policyd.ipt.backend import IptBackend
from policyd.lab.netns import delete_namespaces, entered, sh
from policyd.lab.topology import NodeHandle, Topology
from policyd.model.objects import ClusterNetworkPolicy, ContainerPort, Direction, Namespace, NetworkPolicy, Peer, Pod, PolicyPort, PolicyRule
from policyd.model.selectors import LabelSelector

HERE = Path(__file__).resolve().parent
SCALES = (100, 1_000, 10_000)
IPERF = 5201  # iperf3, TCP and UDP: the established-flow scenario


def connbench() -> str:
    exe = HERE / ".build" / "connbench"
    src = HERE / "connbench.c"
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        if not shutil.which("gcc"):
            raise SystemExit("bench: the first-packet scenario needs gcc (apt-get install gcc)")
        exe.parent.mkdir(exist_ok=True)
        subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
    return str(exe)


def tool_versions() -> str:
    nft = sh("nft", "--version").stdout.split()[1]
    iperf = sh("iperf3", "--version").stdout.split()[1]
    return f"nftables {nft}, iperf3 {iperf}"


def bench_objects() -> tuple[list[Namespace], list[Pod], list[NetworkPolicy]]:
    ns = Namespace("bench", {"kubernetes.io/metadata.name": "bench"})
    port = (ContainerPort(80, "TCP", "http"),)
    server = Pod("bench", "server", {"app": "server"}, "node-0", (ipaddress.ip_address("10.64.0.250"),), port)
    client = Pod("bench", "client", {"app": "client"}, "node-0", (ipaddress.ip_address("10.64.0.251"),), port)
    sel = lambda app: LabelSelector.build({"app": app}, None)  # noqa: E731
    ports = (PolicyPort("TCP", 80), PolicyPort("TCP", IPERF), PolicyPort("UDP", IPERF))
    pols = [
        NetworkPolicy("bench", "server-from-client", sel("server"), (PolicyRule((Peer(sel("client")),), ports),), (), frozenset({Direction.INGRESS})),
        NetworkPolicy("bench", "client-to-server", sel("client"), (), (PolicyRule((Peer(sel("server")),), ports),), frozenset({Direction.EGRESS})),
    ]
    return [ns], [server, client], pols


@dataclass
class Pair:
    """The bench's client and server pods on node-0 (routed, interface dispatch), the server
    listening on TCP 80 (and iperf3 on 5201 when asked)."""

    node: NodeHandle
    exe: str  # connbench
    client_ns: str
    server_ns: str
    client_ip: str
    server_ip: str
    objects: tuple[list[Namespace], list[Pod], list[NetworkPolicy]]
    workdir: Path  # the topology's state directory, removed with it

    def clear(self) -> None:
        """Node-0's firewall back to nothing (both backends)."""
        sh("nft", "flush", "ruleset", ns=self.node.netns)
        with entered(self.node.netns):
            IptBackend().delete_table()

    def agent(self, n_pods: int, cfg: RenderConfig | None = None, backend: str = "nftables",
              cnps: Sequence[ClusterNetworkPolicy] = (), n_ns: int = 20, n_nodes: int = 100) -> NodeAgent:
        """A fresh agent on node-0, synced: the pair in the synthetic cluster of `n_pods` pods
        (n_pods/10 NetworkPolicies, at least one) and `cnps`; conntrack flushed after."""
        self.clear()
        nss, pods, pols = self.objects
        agent = NodeAgent(self.node.netns, "node-0", DispatchMode.INTERFACE, backend=backend, cfg=cfg)
        agent.load(nss + synthetic.namespaces(n_ns), pods + [synthetic.pod(i, n_ns, n_nodes) for i in range(n_pods)],
                   pols + synthetic.policies(max(1, n_pods // 10), n_ns), list(cnps))
        agent.sync()
        sh("conntrack", "-F", ns=self.node.netns, check=False)
        return agent


@contextmanager
def pair(tag: str, iperf_server: bool = False) -> Iterator[Pair]:
    """The pair in a topology of its own (prefix `pd<tag><random>`), removed on the way out
    even half-built; the node's firewall is cleared before that."""
    exe = connbench()
    prefix = f"pd{tag}{uuid.uuid4().hex[:6]}"
    topo = Topology(prefix, "routed", state_dir=f"/run/policyd/{prefix}")
    servers: list[subprocess.Popen] = []
    try:
        node = topo.add_node("node-0", ipaddress.ip_network("10.64.0.0/24"))
        objects = bench_objects()
        pods = objects[1]
        handles = [topo.add_pod(p, [], []) for p in pods]
        topo.wait_ready(handles=handles)
        server_ns = handles[0].netns
        servers = [subprocess.Popen(["ip", "netns", "exec", server_ns, exe, "server", "80"])]
        if iperf_server:
            servers.append(subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s"], stdout=subprocess.DEVNULL))
        time.sleep(0.3)  # the servers listen
        it = Pair(node, exe, handles[1].netns, server_ns, str(pods[1].ips[0]), str(pods[0].ips[0]), objects, Path(topo.state_dir))
        yield it
        it.clear()
    finally:
        teardown(servers, topo)


def linear_ruleset(peers: list[str], client: str, server: str) -> str:
    rules = [f"    ip saddr {ip} ip daddr {server} tcp dport 80 accept" for ip in peers if ip != client]
    rules.append(f"    ip saddr {client} ip daddr {server} tcp dport 80 accept")
    rules.append(f"    ip saddr {client} ip daddr {server} meta l4proto {{ tcp, udp }} th dport {IPERF} accept")
    return "\n".join([
        "table inet linear {",
        "  chain forward {",
        "    type filter hook forward priority 0; policy accept;",
        "    ct state established,related accept",
        *rules,
        f"    ip daddr {server} drop",
        "  }",
        "}",
    ]) + "\n"


def run_client(exe: str, ns: str, ip: str, seconds: float) -> tuple[float, float, float]:
    out = sh(exe, "client", ip, "80", str(seconds), ns=ns).stdout.split()
    n, rate, p50, p99, failed = int(out[0]), float(out[1]), float(out[2]), float(out[3]), int(out[4])
    if failed:
        raise RuntimeError(f"{failed} of {n + failed} connections failed: the ruleset must allow the client")
    return p50, p99, rate


def iperf(ns: str, server_ip: str, seconds: float, udp: bool) -> float:
    """Single-stream TCP throughput (Gbit/s) or 64-byte UDP packets received per second."""
    args = ["iperf3", "-c", server_ip, "-t", str(seconds), "-J"] + (["-u", "-b", "0", "-l", "64"] if udp else [])
    end = json.loads(sh(*args, ns=ns).stdout)["end"]
    if udp:
        s = end["sum"]
        return (s["packets"] - s["lost_packets"]) / s["seconds"]
    return end["sum_received"]["bits_per_second"] / 1e9


@dataclass
class FirstPacket:
    seconds: float
    repeats: int
    conns: dict[tuple[str, int], list[tuple[float, float, float]]]  # variant → [(p50 µs, p99 µs, conn/s)]
    flows: dict[tuple[str, int], list[tuple[float, float]]]  # variant → [(TCP Gbit/s, UDP pps)]


def measure(args, kinds: tuple[str, ...] = ("policyd", "linear reference")) -> FirstPacket:
    """Variants: no firewall, then each kind at every scale ("policyd" and "policyd
    iptables" are the agent on each backend, "linear reference" the nft rule list)."""
    seconds, repeats = (1.5, 2) if args.quick else (3.0, 5)
    flow_seconds = 2 if args.quick else 5
    with pair("f", iperf_server=True) as it:
        rules_file = it.workdir / "linear.nft"

        def install(kind: str, n: int) -> None:
            if kind.startswith("policyd"):
                it.agent(n, backend="iptables" if kind == "policyd iptables" else "nftables")
                return
            it.clear()
            if kind == "linear reference":
                peers = [str(synthetic.pod(i, 20, 100).ips[0]) for i in range(n)]
                rules_file.write_text(linear_ruleset(peers, it.client_ip, it.server_ip))
                sh("nft", "-f", str(rules_file), ns=it.node.netns)
                rules_file.unlink()  # or the topology's teardown cannot remove its directory
            sh("conntrack", "-F", ns=it.node.netns, check=False)

        variants: list[tuple[str, int]] = [("no firewall", 0)]
        variants += [(k, n) for k in kinds for n in SCALES]
        conns: dict[tuple[str, int], list[tuple[float, float, float]]] = {v: [] for v in variants}
        flow_variants = [("no firewall", 0)] + [(k, SCALES[-1]) for k in kinds]
        flows: dict[tuple[str, int], list[tuple[float, float]]] = {v: [] for v in flow_variants}
        for _ in range(repeats):
            for kind, n in variants:  # interleaved, so drift hits every variant alike
                install(kind, n)
                conns[(kind, n)].append(run_client(it.exe, it.client_ns, it.server_ip, seconds))
                if (kind, n) in flows:
                    flows[(kind, n)].append((iperf(it.client_ns, it.server_ip, flow_seconds, False),
                                             iperf(it.client_ns, it.server_ip, flow_seconds, True)))
    return FirstPacket(seconds, repeats, conns, flows)


def teardown(servers: list[subprocess.Popen], topo: Topology) -> None:
    """The servers, then every namespace of the bench's topology (even half-built)."""
    for proc in servers:
        proc.kill()
        proc.wait()
    topo.teardown()
    delete_namespaces(topo.prefix + ".")


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def first_packet_lines(r: FirstPacket) -> list[str]:
    base = r.conns[("no firewall", 0)]
    b50, b99, brate = med([x[0] for x in base]), med([x[1] for x in base]), med([x[2] for x in base])
    linear = {n: med([x[0] for x in r.conns[("linear reference", n)]]) for n in SCALES}
    rows = []
    for (kind, n), rs in r.conns.items():
        p50s, p99s, rates = [x[0] for x in rs], [x[1] for x in rs], [x[2] for x in rs]
        vs_linear = f"{med(p50s) - linear[n]:+.1f} µs" if kind == "policyd" else "—"
        rows.append([kind, n or "—", spread(p50s), spread(p99s), spread(rates, "{:,.0f}"), f"{med(p50s) - b50:+.1f} µs",
                     f"{med(p99s) - b99:+.1f} µs", f"{med(rates) / brate:.0%}", vs_linear])
    pd = {n: med([x[0] for x in r.conns[("policyd", n)]]) for n in SCALES}
    return [
        f"Two pod namespaces on one node (routed, interface dispatch); a C client (bench/connbench.c) opens one TCP connection at a time for {r.seconds} s, "
        f"{r.repeats} runs per variant, variants interleaved. Cluster sizes: remote pods of the synthetic cluster (N pods, N/10 policies) "
        "fill the peer sets; the client's egress and the server's ingress are isolated by policies that allow exactly this traffic. "
        "The linear reference has one `ip saddr … tcp dport 80 accept` rule per pod, the client's last (the shape iptables-based agents produce). "
        "Each cell: median over runs (min–max).",
        "",
        *table(["variant", "pods", "p50 latency µs", "p99 latency µs", "connections/s", "Δp50 vs limit", "Δp99 vs limit",
                "rate vs limit", "Δp50 vs linear"], rows),
        "",
        f"policyd's p50 moves {pd[SCALES[-1]] - pd[SCALES[1]]:+.1f} µs from 1,000 to 10,000 pods (target: < 2 µs); "
        f"the linear reference moves {linear[SCALES[-1]] - linear[SCALES[1]]:+.1f} µs. Plot: [first-packet.png](first-packet.png).",
    ]


def established_lines(r: FirstPacket) -> list[str]:
    base = r.flows[("no firewall", 0)]
    btcp, budp = med([x[0] for x in base]), med([x[1] for x in base])
    rows = []
    for (kind, n), rs in r.flows.items():
        tcp, udp = [x[0] for x in rs], [x[1] for x in rs]
        rows.append([kind, n or "—", spread(tcp, "{:.2f}"), f"{med(tcp) / btcp:.0%}", spread(udp, "{:,.0f}"), f"{med(udp) / budp:.0%}"])
    return [
        "Same namespaces and policies; iperf3, one TCP stream, and 64-byte UDP datagrams sent as fast as iperf3 can (packets received per second), "
        f"{r.repeats} runs per variant. Targets: TCP ≥ 95 % and UDP ≥ 85 % of the limit with the 10,000-pod ruleset.",
        "",
        *table(["variant", "pods", "TCP Gbit/s", "TCP vs limit", "UDP packets/s", "UDP vs limit"], rows),
    ]


Series = dict[tuple[str, int], tuple[tuple[float, float, float], tuple[float, float, float]]]  # p50, p99: (median, min, max)


def series(r: FirstPacket) -> Series:
    def mmm(xs: list[float]) -> tuple[float, float, float]:
        return med(xs), min(xs), max(xs)

    return {v: (mmm([x[0] for x in rs]), mmm([x[1] for x in rs])) for v, rs in r.conns.items()}


def series_from_report(text: str) -> Series:
    """The same figures read back from the first-packet table of docs/benchmarks.md."""
    def mmm(cell: str) -> tuple[float, float, float]:
        m, rng = cell.split(" (")
        lo, hi = rng.rstrip(")").split("–")
        return float(m), float(lo), float(hi)

    out: Series = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 9 and cells[0] in ("no firewall", "policyd", "linear reference"):
            out[(cells[0], 0 if cells[1] == "—" else int(cells[1]))] = (mmm(cells[2]), mmm(cells[3]))
    return out


def plot(data: Series, path: Path) -> None:
    """p50 and p99 against cluster size, one panel each (p99 is far noisier on a VM and
    would flatten p50 on a shared axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), dpi=110)
    for q, ax in enumerate(axes):
        label = "p50" if q == 0 else "p99"
        ax.axhline(data[("no firewall", 0)][q][0], color="grey", linestyle="--", label="no firewall (limit)")
        for kind, color in (("policyd", "tab:blue"), ("linear reference", "tab:red")):
            pts = [data[(kind, n)][q] for n in SCALES]
            ys = [m for m, _, _ in pts]
            ax.errorbar(SCALES, ys, yerr=[[m - lo for m, lo, _ in pts], [hi - m for m, _, hi in pts]], color=color,
                        marker="o", capsize=3, label=kind)
        ax.set_xscale("log")
        ax.set_xlabel("pods in the cluster (peer-set members / linear rules)")
        ax.set_ylabel(f"new TCP connection latency, {label}, µs")
        ax.set_title(f"{label}: median over runs, bars min–max")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
        ax.grid(True, alpha=0.3)
    fig.suptitle("First-packet cost against cluster size")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
