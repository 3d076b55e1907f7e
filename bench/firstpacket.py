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
import shutil
import statistics
import subprocess
import uuid
from pathlib import Path

import synthetic

from policyd.lab.agent import NodeAgent
from policyd.lab.netns import delete_namespaces, sh
from policyd.lab.topology import Topology
from policyd.model.objects import ContainerPort, Direction, Namespace, NetworkPolicy, Peer, Pod, PolicyPort, PolicyRule
from policyd.model.selectors import LabelSelector
from policyd.nft.render import DispatchMode

HERE = Path(__file__).resolve().parent
SCALES = (100, 1_000, 10_000)


def connbench() -> str:
    exe = HERE / ".build" / "connbench"
    src = HERE / "connbench.c"
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        if not shutil.which("gcc"):
            raise SystemExit("bench: the first-packet scenario needs gcc (apt-get install gcc)")
        exe.parent.mkdir(exist_ok=True)
        subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
    return str(exe)


def bench_objects() -> tuple[list[Namespace], list[Pod], list[NetworkPolicy]]:
    ns = Namespace("bench", {"kubernetes.io/metadata.name": "bench"})
    port = (ContainerPort(80, "TCP", "http"),)
    server = Pod("bench", "server", {"app": "server"}, "node-0", (ipaddress.ip_address("10.64.0.250"),), port)
    client = Pod("bench", "client", {"app": "client"}, "node-0", (ipaddress.ip_address("10.64.0.251"),), port)
    sel = lambda app: LabelSelector.build({"app": app}, None)  # noqa: E731
    tcp80 = (PolicyPort("TCP", 80),)
    pols = [
        NetworkPolicy("bench", "server-from-client", sel("server"), (PolicyRule((Peer(sel("client")),), tcp80),), (), frozenset({Direction.INGRESS})),
        NetworkPolicy("bench", "client-to-server", sel("client"), (), (PolicyRule((Peer(sel("server")),), tcp80),), frozenset({Direction.EGRESS})),
    ]
    return [ns], [server, client], pols


def linear_ruleset(peers: list[str], client: str, server: str) -> str:
    rules = [f"    ip saddr {ip} ip daddr {server} tcp dport 80 accept" for ip in peers if ip != client]
    rules.append(f"    ip saddr {client} ip daddr {server} tcp dport 80 accept")
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


def first_packet(args) -> list[str]:
    exe = connbench()
    seconds, repeats = (1.5, 2) if args.quick else (3.0, 5)
    prefix = f"pdf{uuid.uuid4().hex[:6]}"
    topo = Topology(prefix, "routed", state_dir=f"/run/policyd/{prefix}")
    server_proc = None
    try:
        node = topo.add_node("node-0", ipaddress.ip_network("10.64.0.0/24"))
        nss, pods, pols = bench_objects()
        handles = [topo.add_pod(p, [], []) for p in pods]
        topo.wait_ready(handles=handles)
        server_ns, client_ns = handles[0].netns, handles[1].netns
        server_ip, client_ip = str(pods[0].ips[0]), str(pods[1].ips[0])
        server_proc = subprocess.Popen(["ip", "netns", "exec", server_ns, exe, "server", "80"])
        # Per variant: how to install it, and how to remove it afterwards.
        variants: list[tuple[str, int]] = [("no firewall", 0)]
        variants += [("policyd", n) for n in SCALES] + [("linear reference", n) for n in SCALES]
        results: dict[tuple[str, int], list[tuple[float, float, float]]] = {v: [] for v in variants}
        rules_file = Path(f"/run/policyd/{prefix}/linear.nft")
        for _ in range(repeats):
            for kind, n in variants:
                sh("nft", "flush", "ruleset", ns=node.netns)
                if kind == "policyd":
                    n_ns, n_nodes = 20, 100
                    agent = NodeAgent(node.netns, "node-0", DispatchMode.INTERFACE)
                    agent.load(nss + synthetic.namespaces(n_ns), pods + [synthetic.pod(i, n_ns, n_nodes) for i in range(n)],
                               pols + synthetic.policies(max(1, n // 10), n_ns))
                    agent.sync()
                elif kind == "linear reference":
                    peers = [str(synthetic.pod(i, 20, 100).ips[0]) for i in range(n)]
                    rules_file.write_text(linear_ruleset(peers, client_ip, server_ip))
                    sh("nft", "-f", str(rules_file), ns=node.netns)
                sh("conntrack", "-F", ns=node.netns, check=False)
                results[(kind, n)].append(run_client(exe, client_ns, server_ip, seconds))
        sh("nft", "flush", "ruleset", ns=node.netns)
    finally:
        if server_proc:
            server_proc.kill()
            server_proc.wait()
        topo.teardown()
        delete_namespaces(prefix + ".")

    def med(xs: list[float]) -> float:
        return statistics.median(xs)

    base = results[("no firewall", 0)]
    b50, b99, brate = med([r[0] for r in base]), med([r[1] for r in base]), med([r[2] for r in base])
    lines = [
        f"Two pod namespaces on one node (routed, interface dispatch); a C client opens one TCP connection at a time for {seconds} s, "
        f"{repeats} runs per variant, variants interleaved. Cluster sizes: remote pods of the synthetic cluster (N pods, N/10 policies) "
        "fill the peer sets; the client's egress and the server's ingress are isolated by policies that allow exactly this connection. "
        "The linear reference has one `ip saddr … tcp dport 80 accept` rule per pod, the client's last. Latency medians over runs (min–max).",
        "",
        "| variant | pods | p50 latency µs | p99 latency µs | connections/s | Δp50 vs limit | Δp99 vs limit | rate vs limit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind, n in variants:
        rs = results[(kind, n)]
        p50s, p99s, rates = [r[0] for r in rs], [r[1] for r in rs], [r[2] for r in rs]
        lines.append(
            f"| {kind} | {n or '—'} | {med(p50s):.1f} ({min(p50s):.1f}–{max(p50s):.1f}) | {med(p99s):.1f} ({min(p99s):.1f}–{max(p99s):.1f}) "
            f"| {med(rates):,.0f} | {med(p50s) - b50:+.1f} µs | {med(p99s) - b99:+.1f} µs | {med(rates) / brate:.0%} |"
        )
    return lines
