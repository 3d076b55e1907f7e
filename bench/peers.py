"""policyd beside kube-network-policies and kube-router on one real cluster
(`bench/run.py --only peers`, docs/peers.md).

One cluster (realcluster/: two nodes, bridge CNI, kube-proxy in iptables mode); the agents one
after another, each removed and every node's kernel checked for its leftovers before the next:
policyd from its chart (nftables, then iptables), kube-network-policies and kube-router
(realcluster/peers.py: built from their modules, installed from our manifests).

Phase 1, for each agent: idle RSS and CPU per node (30 s after its pods are Ready), then the
upstream Netpol e2e suite (realcluster/conformance.py: the same binary, focus, skips and
parallelism as docs/conformance.md), with every agent process's RSS sampled every 2 s and its
CPU counted over the suite. Then the agent's process on node-2 is killed (SIGKILL) while
realcluster/chaos.py's prober, in a client pod on node-1, opens a connection every 20 ms to
an allowed and to a denied server on node-2: how many denied probes got through, how many
allowed ones failed and the longest run of them, until 3 s after the agent is Ready again.

Phase 2, with 1,000 more pods in the cluster (bound to a node no kubelet runs, as
bench/cluster_latency.py makes them), and again with 10,000, for each agent: idle RSS and CPU
(10 s after its pods are Ready), policy create → enforced (100 policies at
5/s, each opening one port to an isolated server; a probe from the client pod counts only
completed connections, so an agent that rejects with ICMP is not read as allowing) and pod
create → reachable (100 pods, 4 at a time), with RSS and CPU per node during the pod churn;
then the data path between two pods on one node (node-1), the server selected by all 102 of
the bench's policies: new connections one at a time for 10 s (connbench: rate, p50, p99), one
iperf3 TCP stream and 64-byte UDP datagrams for 5 s each, against the same pair with no agent
at all (the limit), measured in the same phase before the first agent.
The suite needs every node Ready, so the node without a kubelet exists only in phase 2.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cluster as bench_cluster  # noqa: E402
import cluster_latency as cl  # noqa: E402
import firstpacket  # noqa: E402
import report  # noqa: E402
from firstpacket import connbench  # noqa: E402

from policyd.lab.netns import entered  # noqa: E402
from realcluster import chaos, conformance, peers  # noqa: E402
from realcluster.cluster import Cluster  # noqa: E402
from realcluster.layout import Layout  # noqa: E402
from realcluster.paths import ROOT, k8s_version  # noqa: E402
from realcluster.walkthrough import RELEASE, RELEASE_NS, install_chart, kernel_is_clean, uninstall_chart  # noqa: E402

COMMAND = "bench/run.py --only peers"  # names the e2e reports
IDLE_SECONDS = 30
SAMPLES = 100
GHOSTS = (1000, 10000)  # extra pods in the cluster for each round of phase 2
SCALE_IDLE_SECONDS = 10
OUT = ROOT / "bench" / ".peers"  # e2e logs and reports of the last run (ignored by git)


def say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Agent:
    name: str
    version: str
    namespace: str
    selector: str
    install: Callable[[Cluster], None]
    uninstall: Callable[[Cluster], list[str]]  # → what it left in the kernel (removed)


def policyd_agent(backend: str) -> Agent:
    def uninstall(cluster: Cluster) -> list[str]:
        uninstall_chart(cluster, backend, say)  # the README's way: helm uninstall, then policyd cleanup
        return [f"{n.name}: policyd's {backend} objects" for n in cluster.layout.nodes if not kernel_is_clean(cluster, n.netns, backend)]

    version = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
    return Agent(f"policyd {backend}", version, RELEASE_NS, f"app.kubernetes.io/instance={RELEASE}",
                 lambda c: install_chart(c, backend, say), uninstall)


def peer_agent(peer: peers.Peer) -> Agent:
    return Agent(peer.name, peer.version, peers.NAMESPACE, peer.selector,
                 lambda c: peers.install(c, peer, say), lambda c: peers.uninstall(c, peer, say))


AGENTS = [policyd_agent("nftables"), policyd_agent("iptables"), peer_agent(peers.KUBE_NETWORK_POLICIES),
          peer_agent(peers.KUBE_ROUTER)]


# --- what an agent costs a node ------------------------------------------------------------

def agent_processes(cluster: Cluster, agent: Agent) -> dict[str, list[int]]:
    """Node → the agent's processes there (found by the pod's cgroup; the sandbox's pause
    process left out)."""
    pods = json.loads(cluster.kubectl("get", "pods", "-n", agent.namespace, "-l", agent.selector, "-o", "json").stdout)["items"]
    nodes = {n.name for n in cluster.layout.nodes}  # not the node without a kubelet, where a peer's pod waits forever
    uid_node = {p["metadata"]["uid"]: p["spec"]["nodeName"] for p in pods if p["spec"].get("nodeName") in nodes}
    out: dict[str, list[int]] = {n: [] for n in uid_node.values()}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cgroup = (entry / "cgroup").read_text()
            if (entry / "comm").read_text().strip() == "pause":
                continue
        except OSError:
            continue
        for uid, node in uid_node.items():
            if f"pod{uid}" in cgroup:
                out[node].append(int(entry.name))
    return out


def rss_mb(pids: list[int]) -> float:
    """The processes' summed resident set (one that just exited counts nothing)."""
    return sum(_alive(lambda p=p: bench_cluster.rss_mb(p)[0]) for p in pids)


def cpu_s(pids: list[int]) -> float:
    return sum(_alive(lambda p=p: bench_cluster.cpu_seconds(p)) for p in pids)


def _alive(read: Callable[[], float]) -> float:
    try:
        return read()
    except OSError:
        return 0.0


@dataclass
class Usage:
    """Per node: the largest RSS seen and the CPU seconds spent over one stretch of time."""

    seconds: float = 0.0
    rss: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)

    def rss_range(self) -> str:
        return _range(list(self.rss.values()), "{:.0f}", " MB")

    def cpu_range(self) -> str:
        return _range(list(self.cpu.values()), "{:.1f}", " s")

    def cpu_share(self) -> str:
        return _range([c / self.seconds * 100 for c in self.cpu.values()], "{:.2f}", " %")


def _range(xs: list[float], fmt: str, unit: str) -> str:
    if not xs:
        return "—"
    lo, hi = min(xs), max(xs)
    return fmt.format(lo) + unit if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}–{fmt.format(hi)}{unit}"


class Meter:
    """RSS sampled every 2 s and CPU counted from start to stop, per node, of the agent's
    processes (looked up again at each sample: a restarted agent is still counted)."""

    def __init__(self, cluster: Cluster, agent: Agent) -> None:
        self.cluster, self.agent = cluster, agent
        self.usage = Usage()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Meter:
        self._started = time.monotonic()
        self._cpu0 = {n: cpu_s(p) for n, p in agent_processes(self.cluster, self.agent).items()}
        self._thread.start()
        return self

    def _sample(self) -> dict[str, list[int]]:
        procs = agent_processes(self.cluster, self.agent)
        for node, pids in procs.items():
            self.usage.rss[node] = max(self.usage.rss.get(node, 0.0), rss_mb(pids))
        return procs

    def _run(self) -> None:
        while not self._stop.wait(2.0):
            try:
                self._sample()
            except Exception as e:  # noqa: BLE001 (an API hiccup must not end the measurement)
                say(f"usage sample failed: {e}")

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        procs = self._sample()
        self.usage.seconds = time.monotonic() - self._started
        self.usage.cpu = {n: cpu_s(p) - self._cpu0.get(n, 0.0) for n, p in procs.items()}


# --- the run ---------------------------------------------------------------------------------


FLOW_SECONDS = 10.0
IPERF_SECONDS = 5


@dataclass(frozen=True)
class Flows:
    conn_rate: float  # new connections per second, one at a time
    p50_us: float
    p99_us: float
    tcp_gbps: float  # one iperf3 stream
    udp_pps: float  # 64-byte datagrams received per second


class FlowPair:
    """A client and a server pod on node-1, their network namespaces given names of the
    cluster's prefix (so `down` kills what runs in them), the server running connbench on
    TCP 80 and iperf3 on 5201 (TCP and UDP), both allowed from the client by one policy."""

    def __init__(self, cluster: Cluster, api: Any) -> None:
        from kubernetes import client

        core = client.CoreV1Api(api)
        self.cluster, self.names, self.servers = cluster, [], []
        pods = {}
        for role, app in (("flow-server", "bench-server"), ("flow-client", "bench-client")):
            core.create_namespaced_pod(cl.NS, cl._pod(role, {"app": app}, "node-1", ["sleep", "36000"]))
            pods[role] = cl.wait_running(api, role)
            name = f"{cluster.layout.prefix}.{role}"
            subprocess.run(["ip", "netns", "attach", name, str(cl.pod_netns_pid(cluster, pods[role].metadata.uid))], check=True)
            self.names.append(name)
        self.server_ns, self.client_ns = self.names
        self.server_ip = pods["flow-server"].status.pod_ip
        for argv in ([connbench(), "server", "80"], ["iperf3", "-s", "-p", str(firstpacket.IPERF)]):
            self.servers.append(subprocess.Popen(["ip", "netns", "exec", self.server_ns, *argv], stdout=subprocess.DEVNULL))
        time.sleep(0.5)

    @staticmethod
    def policy() -> dict[str, Any]:
        ports = [{"protocol": "TCP", "port": 80}, {"protocol": "TCP", "port": firstpacket.IPERF},
                 {"protocol": "UDP", "port": firstpacket.IPERF}]
        return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "flows", "namespace": cl.NS},
                "spec": {"podSelector": {"matchLabels": {"app": "bench-server"}}, "policyTypes": ["Ingress"],
                         "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "bench-client"}}}], "ports": ports}]}}

    def measure(self) -> Flows:
        p50, p99, rate = firstpacket.run_client(connbench(), self.client_ns, self.server_ip, FLOW_SECONDS)
        tcp = firstpacket.iperf(self.client_ns, self.server_ip, IPERF_SECONDS, udp=False)
        udp = firstpacket.iperf(self.client_ns, self.server_ip, IPERF_SECONDS, udp=True)
        return Flows(rate, p50, p99, tcp, udp)

    def close(self) -> None:
        for proc in self.servers:
            proc.kill()
            proc.wait()
        for name in self.names:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)  # the name only: the pod keeps its namespace


@dataclass
class AtScale:
    """Phase 2 of one agent with `pods` pods in the cluster."""

    pods: int
    idle: Usage | None = None
    policy_create: list[float] = field(default_factory=list)
    pod_create: list[float] = field(default_factory=list)
    churn_usage: Usage | None = None
    flows: Flows | None = None


@dataclass
class Result:
    agent: Agent
    idle: Usage | None = None
    suite: conformance.Report | None = None
    suite_usage: Usage | None = None
    scales: dict[int, AtScale] = field(default_factory=dict)  # by the cluster's pod count
    restart: chaos.FaultResult | None = None
    leftovers: list[list[str]] = field(default_factory=list)  # per uninstall (one after each phase)
    errors: list[str] = field(default_factory=list)


def phase_suite(cluster: Cluster, agent: Agent, result: Result) -> None:
    agent.install(cluster)
    time.sleep(5)  # its first sync
    with Meter(cluster, agent) as idle:
        time.sleep(IDLE_SECONDS)
    result.idle = idle.usage
    say(f"{agent.name} idle: RSS {idle.usage.rss_range()}, CPU {idle.usage.cpu_share()}")
    out = OUT / agent.name.replace(" ", "-")
    with Meter(cluster, agent) as during:
        result.suite = conformance.run_suite(cluster, agent.name, out, COMMAND, say)
    result.suite_usage = during.usage
    say(f"{agent.name} during the suite: RSS ≤ {during.usage.rss_range()}, CPU {during.usage.cpu_range()}")
    phase_restart(cluster, agent, result)


def phase_restart(cluster: Cluster, agent: Agent, result: Result) -> None:
    """kill -9 of the agent on node-2 under chaos.py's prober (the chaos namespace's client,
    allowed and denied pods and their policies)."""

    def pod(name: str) -> dict[str, Any]:
        return json.loads(cluster.kubectl("get", "pod", "-n", chaos.NS, name, "-o", "json").stdout)  # type: ignore[no-any-return]

    def agent_pod() -> dict[str, Any]:
        pods = json.loads(cluster.kubectl("get", "pods", "-n", agent.namespace, "-l", agent.selector, "-o", "json").stdout)["items"]
        return next(p for p in pods if p["spec"].get("nodeName") == "node-2" and not p["metadata"].get("deletionTimestamp"))

    def ready(p: dict[str, Any]) -> bool:
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in p["status"].get("conditions", []))

    def wait(what: str, ok: Callable[[], bool], timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not ok():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: not within {timeout:.0f} s")
            time.sleep(0.2)

    cluster.kubectl("apply", "-f", "-", input=chaos.manifests())
    try:
        wait("the chaos pods running", lambda: all(pod(n)["status"].get("podIP") and ready(pod(n)) for n in ("client", "allowed", "denied")))
        targets = {n: (pod(n)["status"]["podIP"], 80) for n in ("allowed", "denied")}
        prober = chaos.Prober(f"/proc/{chaos.pod_pid(pod('client')['metadata']['uid'])}/ns/net", targets)
        prober.start()
        try:
            time.sleep(3.0)  # the policies enforced (the agent was installed before the suite)
            start = time.monotonic()
            before = agent_pod()
            restarts = before["status"]["containerStatuses"][0]["restartCount"]
            for pid in agent_processes(cluster, agent)["node-2"]:
                os.kill(pid, 9)
            wait("the agent restarted", lambda: agent_pod()["status"]["containerStatuses"][0]["restartCount"] > restarts)
            wait("the agent Ready again", lambda: ready(agent_pod()))
            time.sleep(chaos.SETTLE)
            end = time.monotonic()
        finally:
            prober.finish()
        result.restart = chaos.window(prober.probes, start, end, "kill -9 of the agent on node-2", False)
        say(f"{agent.name} restart: {result.restart.denied_connected} of {result.restart.denied} denied probes connected, "
            f"{result.restart.allowed_failed} of {result.restart.allowed} allowed failed")
    finally:
        cluster.kubectl("delete", "namespace", chaos.NS, "--wait=true", "--timeout=90s", check=False, timeout=100)


def phase_latency(cluster: Cluster, api: Any, agent: Agent, result: Result, pair: FlowPair, pods: int) -> None:
    from kubernetes import client

    at = result.scales[pods] = AtScale(pods)
    agent.install(cluster)
    time.sleep(3)  # its first sync
    with Meter(cluster, agent) as idle:
        time.sleep(SCALE_IDLE_SECONDS)
    at.idle = idle.usage
    say(f"{agent.name} idle with {pods} pods: RSS {idle.usage.rss_range()}, CPU {idle.usage.cpu_share()}")
    core, net = client.CoreV1Api(api), client.NetworkingV1Api(api)
    run = uuid.uuid4().hex[:4]
    server = core.create_namespaced_pod(cl.NS, cl._pod(f"server-{run}", {"app": "bench-server"}, "node-2",
                                                       ["httpd", "-f", "-p", "80", "-h", "/www"]))
    client_pod = core.create_namespaced_pod(cl.NS, cl._pod(f"client-{run}", {"app": "bench-client"}, "node-1", ["sleep", "3600"]))
    server = cl.wait_running(api, server.metadata.name)
    client_pod = cl.wait_running(api, client_pod.metadata.name)
    listener = subprocess.Popen(["nsenter", f"--net=/proc/{cl.pod_netns_pid(cluster, server.metadata.uid)}/ns/net",
                                 connbench(), "listen", str(cl.PROBE_PORT0), str(SAMPLES)])
    try:
        net.create_namespaced_network_policy(cl.NS, cl._policy("admit-new", "bench-new", 80))
        net.create_namespaced_network_policy(cl.NS, pair.policy())
        time.sleep(3)
        say(f"{agent.name}: policy create → enforced, {SAMPLES} policies at 5/s")
        at.policy_create = cl.policy_create(cluster, api, server.status.pod_ip, client_pod.metadata.uid, SAMPLES, 5.0,
                                            connected=True)
        say(f"{agent.name}: pod create → reachable, {SAMPLES} pods 4 at a time")
        with Meter(cluster, agent) as churn:
            at.pod_create, _ = cl.pod_create(api, server.status.pod_ip, SAMPLES, prefix=f"new-{run}")
        at.churn_usage = churn.usage
        say(f"{agent.name}: new connections and flows between two pods on node-1")
        at.flows = pair.measure()
    finally:
        listener.kill()
        listener.wait()
        for name in (server.metadata.name, client_pod.metadata.name):
            core.delete_namespaced_pod(name, cl.NS, grace_period_seconds=0)
        net.delete_collection_namespaced_network_policy(cl.NS)


def measure(args: Any) -> list[str]:
    for p in peers.PEERS:  # before any network namespace is entered: the build fetches Debian packages
        peers.build_image(p, say)
    started = time.monotonic()
    layout = Layout(f"p{uuid.uuid4().hex[:6]}", cni="bridge")
    cluster = Cluster(layout)
    results = [Result(a) for a in AGENTS]
    cluster.up(say=say)
    try:
        for r in results:
            _step(r, "suite", lambda r=r: phase_suite(cluster, r.agent, r), cluster)
        from kubernetes import client, config

        api = config.new_client_from_config(config_file=str(layout.kubeconfig))
        with entered(layout.fabric):
            client.CoreV1Api(api).create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": cl.NS}})
            pair: FlowPair | None = None
            made = 0
            try:
                for ghosts in GHOSTS:
                    say(f"{ghosts - made} more pods on a node without kubelet ({ghosts} in all)")
                    cl.ghosts(api, ghosts - made, first=made)
                    made = ghosts
                    if pair is None:
                        pair = FlowPair(cluster, api)
                        say("new connections and flows between two pods on node-1 with no agent (the limit)")
                        limit = pair.measure()
                    pods = len(client.CoreV1Api(api).list_pod_for_all_namespaces(limit=20000).items)
                    for r in results:
                        _step(r, f"latency with {pods} pods",
                              lambda r=r, pods=pods, pair=pair: phase_latency(cluster, api, r.agent, r, pair, pods), cluster)
            finally:
                if pair is not None:
                    pair.close()
    finally:
        cluster.down(say=say)
    return document(results, limit, time.monotonic() - started)


def _step(r: Result, what: str, body: Callable[[], None], cluster: Cluster) -> None:
    """One phase of one agent; whatever happens, the agent is removed and its leftovers
    counted, and a failure is reported in the table rather than ending the run."""
    try:
        body()
    except Exception as e:  # noqa: BLE001
        say(f"{r.agent.name} {what} failed: {e}")
        r.errors.append(f"{what}: {str(e).splitlines()[0][:300]}")
    finally:
        try:
            r.leftovers.append(r.agent.uninstall(cluster))
        except Exception as e:  # noqa: BLE001
            r.errors.append(f"uninstall after {what}: {str(e).splitlines()[0][:300]}")
            raise


# --- docs/peers.md ---------------------------------------------------------------------------


def _p(xs: list[float], q: float) -> float:
    return report.quantile(xs, q) * 1e3


def _lat(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1e3:.1f} / {_p(xs, 0.99):.1f} ms" if xs else "—"


def _suite(s: conformance.Report | None) -> str:
    if s is None:
        return "—"
    return f"{s.count('passed')} passed, {s.count('failed')} failed, {s.count('skipped')} skipped ({s.seconds / 60:.1f} min)"


def _ratio(ours: list[float], theirs: list[float]) -> str:
    if not ours or not theirs:
        return "—"
    return f"{statistics.median(theirs) / statistics.median(ours):.2f}× / {_p(theirs, 0.99) / _p(ours, 0.99):.2f}×"


def document(results: list[Result], limit: Flows, seconds: float) -> list[str]:
    names = [r.agent.name for r in results]
    base = results[0]
    scales = sorted({n for r in results for n in r.scales})

    def row(label: str, cell: Callable[[Result], str]) -> list[str]:
        return [label, *(cell(r) for r in results)]

    def usage(u: Usage | None, what: str) -> str:
        if u is None:
            return "—"
        return u.rss_range() if what == "rss" else u.cpu_share() if what == "share" else u.cpu_range()

    def at(r: Result, pods: int) -> AtScale:
        return r.scales.get(pods) or AtScale(pods)

    rows = [
        row("upstream Netpol e2e", lambda r: _suite(r.suite)),
        *(row(f"policy create → enforced, p50 / p99 ({n} pods)", lambda r, n=n: _lat(at(r, n).policy_create)) for n in scales),
        *(row(f"pod create → reachable, p50 / p99 ({n} pods)", lambda r, n=n: _lat(at(r, n).pod_create)) for n in scales),
        row(f"RSS per node, idle ({IDLE_SECONDS} s after ready)", lambda r: usage(r.idle, "rss")),
        row("CPU per node, idle (share of one CPU)", lambda r: usage(r.idle, "share")),
        *(row(f"RSS per node, idle ({n} pods)", lambda r, n=n: usage(at(r, n).idle, "rss")) for n in scales),
        *(row(f"CPU per node, idle ({n} pods; share of one CPU)", lambda r, n=n: usage(at(r, n).idle, "share")) for n in scales),
        row("RSS per node, max during the suite", lambda r: usage(r.suite_usage, "rss")),
        row("CPU per node during the suite", lambda r: usage(r.suite_usage, "cpu")),
        *(row(f"RSS per node, max during pod churn ({n} pods)", lambda r, n=n: usage(at(r, n).churn_usage, "rss")) for n in scales),
        *(row(f"CPU per node during pod churn ({n} pods)", lambda r, n=n: usage(at(r, n).churn_usage, "cpu")) for n in scales),
        row("kill -9 of the agent under a prober: denied probes that connected",
            lambda r: "—" if r.restart is None else f"{r.restart.denied_connected} of {r.restart.denied}"
            + (f" (open {r.restart.open_for:.2f} s)" if r.restart.denied_connected else "")),
        row("kill -9 of the agent under a prober: allowed probes that failed (longest run)",
            lambda r: "—" if r.restart is None else f"{r.restart.allowed_failed} of {r.restart.allowed} "
            f"({r.restart.longest_outage:.2f} s; the window {r.restart.seconds:.1f} s)"),
        row("left in the kernel after uninstall (each phase)",
            lambda r: " and ".join(str(len(x)) for x in r.leftovers) + " objects" if any(r.leftovers) else "nothing"),
    ]
    ratios = [
        [f"{r.agent.name}: {what} ({n} pods)", _ratio(getattr(at(base, n), attr), getattr(at(r, n), attr))]
        for what, attr in (("policy create → enforced", "policy_create"), ("pod create → reachable", "pod_create"))
        for n in scales for r in results[1:]
    ]

    def flow_row(name: str, f: Flows | None) -> list[str]:
        if f is None:
            return [name, "—", "—", "—", "—", "—", "—"]
        return [name, f"{f.conn_rate:,.0f} ({f.conn_rate / limit.conn_rate:.2f}×)", f"{f.p50_us:.0f} ({f.p50_us / limit.p50_us:.2f}×)",
                f"{f.p99_us:.0f} ({f.p99_us / limit.p99_us:.2f}×)", f"{f.tcp_gbps:.1f} ({f.tcp_gbps / limit.tcp_gbps:.2f}×)",
                f"{f.udp_pps / 1e3:,.0f} ({f.udp_pps / limit.udp_pps:.2f}×)", "the limit" if f is limit else ""]

    flows = [flow_row("no agent", limit),
             *(flow_row(f"{r.agent.name} ({n} pods)", at(r, n).flows) for r in results for n in scales)]
    errors = [f"* {r.agent.name}: {e}" for r in results for e in r.errors]
    left = [f"* {r.agent.name}, after the suite: {', '.join(x[:12])}{' …' if len(x) > 12 else ''}"
            for r in results if r.leftovers and (x := r.leftovers[0])]
    return [
        f"One real cluster (two nodes, bridge CNI, kube-proxy iptables mode, Kubernetes {k8s_version()}), the agents one "
        f"after another ({seconds / 60:.0f} min in all).",
        "",
        *report.table(["measure", *names], rows),
        "",
        f"Latency ratios, peer ÷ {base.agent.name} (p50 / p99; above 1: {base.agent.name} is faster):",
        "",
        *report.table(["measure", "ratio"], ratios),
        "",
        f"Data path between two pods on node-1, the server selected by the bench's {SAMPLES + 2} policies (the cluster's pods in "
        f"brackets): new TCP connections one at a time for {FLOW_SECONDS:.0f} s (connect → a byte → close), one iperf3 TCP "
        f"stream and 64-byte UDP datagrams for {IPERF_SECONDS} s; in brackets the ratio to no agent at all, measured in the "
        "same run:",
        "",
        *report.table(["agent", "connections/s", "connect p50 (µs)", "connect p99 (µs)", "TCP Gbit/s", "UDP kpackets/s", ""], flows),
        "",
        *(["What the agents left behind (removed before the next agent):", "", *left, ""] if left else []),
        *(["Failures (the row shows — where a phase did not finish):", "", *errors, ""] if errors else []),
        "Versions: " + ", ".join(f"{r.agent.name} {r.agent.version}" for r in results) + ".",
    ]
