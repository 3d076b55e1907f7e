"""Scale against the real API server: etcd and the pinned kube-apiserver, nothing else (no
controller-manager, scheduler or kubelets: pods are bound to Node objects at creation and
given their addresses through the status subresource, as a kubelet would), filled with N
pods over 1,000 Node objects in 100 namespaces and NetworkPolicies at a tenth of the pods.
One agent (`policyd run`, address dispatch, the node `node-0` with 100 local pods) runs in a
network namespace of its own, with a client certificate of its own, so the API server's
audit log counts exactly its requests.

For each size: fill time; agent start → /readyz; agent CPU until then; RSS when ready and
the largest over a minute once kopf has delivered its own listing; the agent's requests
(lists, pages, watches); 1 % churn (as many pods deleted and created, as fast as the API
server takes them, the last one a new local pod a policy selects): time from the last write
to that pod's address in the node's verdict map, and /readyz answers during it.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from cluster import cpu_seconds, rss_mb, start_until_ready, stop, synthetic_peer  # noqa: E402

from policyd.lab.netns import entered, http_get, sh  # noqa: E402
from realcluster.cluster import Cluster, down  # noqa: E402
from realcluster.layout import Layout  # noqa: E402
from realcluster.pki import PKI  # noqa: E402

AGENT_USER = "policyd-scale-agent"
AUDIT = f"""apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    users: ["{AGENT_USER}"]
  - level: None
"""
NODES, NAMESPACES, LOCAL = 1_000, 100, 100
NODE = "node-0"
METRICS_PORT, HEALTH_PORT = 9808, 9809
APPS = [f"app{i}" for i in range(50)]
TEAMS = ["payments", "search", "identity", "platform", "data"]
CONCURRENCY = 64


def say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def node_name(i: int) -> str:
    return f"node-{i}"


def pod_address(node: int, j: int) -> str:
    return f"10.{64 + node // 256}.{node % 256}.{2 + j}"


def labels(rnd: random.Random, ns: int) -> dict[str, str]:
    """What a Deployment's pods carry: app, tier, version, the template hash."""
    app = rnd.choice(APPS)
    return {"app": app, "tier": rnd.choice(["web", "api", "db", "cache"]), "version": f"v{rnd.randrange(4)}",
            "pod-template-hash": f"{(ns * 7919 + APPS.index(app) * 104729) % 16**10:010x}"}


def pod_doc(name: str, ns: str, node: str, lbl: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": lbl},
            "spec": {"nodeName": node, "automountServiceAccountToken": False,
                     "containers": [{"name": "c", "image": "registry.invalid/none",
                                     "ports": [{"name": "http", "containerPort": 8080}, {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]}}


def policy_doc(i: int, rnd: random.Random) -> dict[str, Any]:
    """Pod selectors, namespace selectors, ipBlocks with except, named and numbered ports,
    one in five with egress."""
    ns = f"ns{i % NAMESPACES}"
    peer = synthetic_peer(i, rnd, APPS, TEAMS)
    port = {"protocol": "TCP", "port": "http" if i % 5 == 0 else 8000 + i % 100}
    spec: dict[str, Any] = {"podSelector": {"matchLabels": {"app": rnd.choice(APPS)}}, "policyTypes": ["Ingress"],
                            "ingress": [{"from": [peer], "ports": [port]}]}
    if i % 5 == 4:
        spec["policyTypes"].append("Egress")
        spec["egress"] = [{"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}],
                           "ports": [{"protocol": "UDP", "port": 53}]},
                          {"to": [{"podSelector": {"matchLabels": {"tier": "db"}}}], "ports": [{"protocol": "TCP", "port": 5432}]}]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": f"pol{i}", "namespace": ns}, "spec": spec}


class Writer:
    """Many concurrent requests to the API server (admin), from inside the fabric namespace."""

    def __init__(self, cp: ScaleControlPlane) -> None:
        self.cp = cp

    def run(self, requests: list[tuple[str, str, dict[str, Any] | None, str]]) -> float:
        """(method, path, body, content type) each; raises on any failure; seconds taken."""
        out: list[float] = []
        err: list[BaseException] = []

        def thread() -> None:
            try:
                with entered(self.cp.layout.fabric):
                    out.append(asyncio.run(self._run(requests)))
            except BaseException as e:  # noqa: BLE001 - reported in the caller's thread
                err.append(e)

        t = threading.Thread(target=thread)
        t.start()
        t.join()
        if err:
            raise err[0]
        return out[0]

    async def _run(self, requests: list[tuple[str, str, dict[str, Any] | None, str]]) -> float:
        ctx = ssl.create_default_context(cafile=str(self.cp.pki.ca.cert))
        ctx.load_cert_chain(str(self.cp.admin.cert), str(self.cp.admin.key))
        queue = iter(requests)
        t0 = time.monotonic()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=CONCURRENCY)) as session:
            async def worker() -> None:
                for method, path, body, ctype in queue:
                    for attempt in range(5):
                        async with session.request(method, self.cp.layout.server + path, data=json.dumps(body) if body else None,
                                                   headers={"Content-Type": ctype}) as r:
                            if r.status < 300 or (method == "DELETE" and r.status == 404):
                                break
                            text = await r.text()
                            if r.status != 429 and r.status < 500 or attempt == 4:
                                raise RuntimeError(f"{method} {path}: {r.status} {text[:300]}")
                        await asyncio.sleep(0.2 * (attempt + 1))

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return time.monotonic() - t0


JSON, MERGE = "application/json", "application/merge-patch+json"


def create(path: str, doc: dict[str, Any]) -> tuple[str, str, dict[str, Any], str]:
    return ("POST", path, doc, JSON)


class ScaleControlPlane:
    def __init__(self) -> None:
        self.layout = Layout(f"s{uuid.uuid4().hex[:6]}", workers=1)
        self.cluster = Cluster(self.layout)
        self.tmp = Path(tempfile.mkdtemp(prefix="policyd-scale-"))
        self.agent: subprocess.Popen[bytes] | None = None

    def up(self) -> None:
        self.cluster.api_only(AUDIT, etcd_size="6g", say=say)
        self.pki = PKI(self.cluster.pki_dir)
        self.admin = self.pki.issue("admin", "kubernetes-admin", ("system:masters",))
        agent = self.pki.issue("scale-agent", AGENT_USER, ("system:masters",))
        self.kubeconfig = self.pki.kubeconfig(self.tmp / "agent.kubeconfig", self.layout.server, "agent", agent)
        self.writer = Writer(self)

    @property
    def node_netns(self) -> str:
        return self.layout.nodes[0].netns

    # --- filling ----------------------------------------------------------------------------

    def fill(self, pods: int, policies: int) -> tuple[float, list[tuple[str, str, str]]]:
        """Namespaces (with their default ServiceAccounts), Node objects, pods with status,
        policies; (seconds, [(namespace, name, address)] of the remote pods)."""
        rnd = random.Random(pods)
        ns_objs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"ns{i}", "labels": {"team": TEAMS[i % len(TEAMS)]}}}
                   for i in range(NAMESPACES)]
        t = self.writer.run([create("/api/v1/namespaces", d) for d in ns_objs])
        t += self.writer.run([create(f"/api/v1/namespaces/ns{i}/serviceaccounts",
                                     {"metadata": {"name": "default"}}) for i in range(NAMESPACES)]
                             + [create("/api/v1/nodes", {"metadata": {"name": node_name(i)}}) for i in range(NODES)])
        placed: list[tuple[str, str, str, int, dict[str, str]]] = []
        for k in range(LOCAL):
            placed.append((f"ns{k % NAMESPACES}", f"local-{k}", pod_address(0, k), 0, labels(rnd, k % NAMESPACES)))
        for k in range(pods - LOCAL):
            node = 1 + k % (NODES - 1)
            ns = rnd.randrange(NAMESPACES)
            placed.append((f"ns{ns}", f"p{k}", pod_address(node, k // (NODES - 1)), node, labels(rnd, ns)))
        t += self.writer.run([create(f"/api/v1/namespaces/{ns}/pods", pod_doc(name, ns, node_name(node), lbl))
                              for ns, name, _, node, lbl in placed])
        t += self.writer.run([("PATCH", f"/api/v1/namespaces/{ns}/pods/{name}/status",
                               {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}, MERGE)
                              for ns, name, ip, _, _ in placed])
        docs = [policy_doc(i, rnd) for i in range(policies)]
        docs.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "probe", "namespace": "ns0"},
                     "spec": {"podSelector": {"matchLabels": {"app": "scale-probe"}}, "policyTypes": ["Ingress"], "ingress": []}})
        t += self.writer.run([create(f"/apis/networking.k8s.io/v1/namespaces/{d['metadata']['namespace']}/networkpolicies", d)
                              for d in docs])
        return t, [(ns, name, ip) for ns, name, ip, node, _ in placed if node != 0]

    # --- the agent ----------------------------------------------------------------------------

    def start_agent(self, timeout: float = 600.0) -> float:
        args = [sys.executable, "-m", "policyd", "run", "--node-name", NODE, "--kubeconfig", str(self.kubeconfig),
                "--dispatch-mode", "address", "--metrics-port", str(METRICS_PORT), "--health-port", str(HEALTH_PORT)]
        self.agent, seconds = start_until_ready(self.node_netns, args, self.tmp / "agent.log", self.http, timeout, cwd=ROOT)
        return seconds

    def http(self, path: str) -> tuple[int, str]:
        port = METRICS_PORT if path == "/metrics" else HEALTH_PORT
        return http_get(self.layout.fabric, f"http://{self.layout.nodes[0].ip}:{port}{path}", timeout=2.0)

    def metric(self, name: str) -> float:
        code, text = self.http("/metrics")
        if code != 200:
            return 0.0
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))

    def proc(self) -> tuple[float, float]:
        """(RSS MB, CPU seconds) of the agent."""
        assert self.agent is not None
        return rss_mb(self.agent.pid)[0], cpu_seconds(self.agent.pid)

    def requests(self) -> Counter[str]:
        """The agent's requests from the audit log: list / list page / watch, per resource."""
        out: Counter[str] = Counter()
        log = self.cluster.audit_log
        if not log.exists():
            return out
        for line in log.read_text().splitlines():
            ev = json.loads(line)
            if ev.get("user", {}).get("username") != AGENT_USER:
                continue
            verb = ev.get("verb", "?")
            if ev.get("stage") != ("ResponseStarted" if verb == "watch" else "ResponseComplete"):
                continue  # a watch is counted when it starts, anything else when it ends
            res = ev.get("objectRef", {}).get("resource", "(discovery)")
            if verb == "list" and "continue=" in ev.get("requestURI", ""):
                verb = "list page"
            out[f"{verb} {res}"] += 1
        return out

    def programmed(self, ip: str) -> bool:
        out = sh("nft", "-j", "list", "map", "inet", "policyd", "pod-ingress-v4", ns=self.node_netns, check=False).stdout
        return f'"{ip}"' in out

    def log_tail(self, n: int = 3000) -> str:
        p = self.tmp / "agent.log"
        return p.read_text()[-n:] if p.exists() else ""

    def down(self) -> None:
        if self.agent is not None:
            stop(self.agent)
        down(self.layout, say=lambda s: None)


@dataclass
class SizeFigures:
    pods: int
    policies: int
    fill: float = 0.0
    ready: float = 0.0
    cpu: float = 0.0
    rss_ready: float = 0.0
    settle: float = 0.0
    rss_steady: float = 0.0
    requests: Counter[str] = field(default_factory=Counter)
    churn_events: int = 0
    churn_write: float = 0.0
    churn_programmed: float = 0.0
    readyz_misses: int = 0
    readyz_checks: int = 0


def measure_size(pods: int, policies: int, steady_s: float) -> SizeFigures:
    f = SizeFigures(pods, policies)
    cp = ScaleControlPlane()
    try:
        say(f"{pods:,} pods / {policies:,} policies: etcd and kube-apiserver in {cp.layout.fabric}")
        cp.up()
        f.fill, remote = cp.fill(pods, policies)
        say(f"filled in {f.fill:.1f} s; starting the agent")
        f.ready = cp.start_agent()
        f.rss_ready, f.cpu = cp.proc()
        say(f"ready in {f.ready:.2f} s (CPU {f.cpu:.2f} s, RSS {f.rss_ready:.0f} MB); waiting for kopf's listing")
        t = time.monotonic()
        while cp.metric('policyd_watch_events_total{kind="NetworkPolicy"}') < policies + 1:
            if time.monotonic() - t > 600:
                raise RuntimeError(f"kopf did not list the policies: {cp.log_tail()}")
            f.rss_steady = max(f.rss_steady, cp.proc()[0])
            time.sleep(0.2)
        f.settle = time.monotonic() - t
        while time.monotonic() - t < f.settle + steady_s:
            f.rss_steady = max(f.rss_steady, cp.proc()[0])
            time.sleep(0.2)
        f.requests = cp.requests()
        f.churn_events, f.churn_write, f.churn_programmed, f.readyz_checks, f.readyz_misses = churn(cp, remote, pods)
        say(f"1 % churn: {f.churn_events} writes in {f.churn_write:.1f} s, programmed {f.churn_programmed * 1e3:.0f} ms after the last; "
            f"RSS steady {f.rss_steady:.0f} MB; /readyz {f.readyz_checks - f.readyz_misses} of {f.readyz_checks}; "
            f"requests {dict(f.requests)}")
    finally:
        cp.down()
    return f


def churn(cp: ScaleControlPlane, remote: list[tuple[str, str, str]], pods: int) -> tuple[int, float, float, int, int]:
    """Delete 1 % of the remote pods and create as many (created with their status in two
    writes, like the fill), the last a new local pod that the `probe` policy isolates; /readyz
    is asked every 0.5 s throughout."""
    n = max(1, pods // 100)
    rnd = random.Random(7)
    gone = rnd.sample(remote, n)
    checks, misses = [0], [0]
    stop = threading.Event()

    def readyz() -> None:
        while not stop.is_set():
            checks[0] += 1
            misses[0] += int(cp.http("/readyz")[0] != 200)
            stop.wait(0.5)

    probe = threading.Thread(target=readyz)
    probe.start()
    try:
        reqs: list[tuple[str, str, dict[str, Any] | None, str]] = [("DELETE", f"/api/v1/namespaces/{ns}/pods/{name}", None, JSON)
                                                                    for ns, name, _ in gone]
        new = [(f"ns{i % NAMESPACES}", f"churn-{i}", ip) for i, (_, _, ip) in enumerate(gone)]
        t = cp.writer.run(reqs + [create(f"/api/v1/namespaces/{ns}/pods", pod_doc(name, ns, node_name(1), labels(rnd, 0)))
                                  for ns, name, _ in new])
        t += cp.writer.run([("PATCH", f"/api/v1/namespaces/{ns}/pods/{name}/status",
                             {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}, MERGE) for ns, name, ip in new])
        ip = pod_address(0, LOCAL + 1)
        t += cp.writer.run([create("/api/v1/namespaces/ns0/pods", pod_doc("churn-local", "ns0", NODE, {"app": "scale-probe"}))])
        t += cp.writer.run([("PATCH", "/api/v1/namespaces/ns0/pods/churn-local/status",
                             {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}, MERGE)])
        last = time.monotonic()
        while not cp.programmed(ip):
            if time.monotonic() - last > 300:
                raise RuntimeError(f"the new local pod was not programmed within 300 s: {cp.log_tail()}")
            time.sleep(0.02)
        programmed = time.monotonic() - last
        time.sleep(1.0)
    finally:
        stop.set()
        probe.join()
    return 4 * n + 2, t, programmed, checks[0], misses[0]


SIZES = [(1_000, 100), (10_000, 1_000), (50_000, 5_000), (100_000, 10_000)]
TARGETS = {1_000: ("≤ 1 s", "≤ 80 MB"), 10_000: ("—", "≤ 120 MB"), 100_000: ("≤ 10 s", "≤ 300 MB")}


def measure(args: Any) -> list[str]:
    import report

    sizes = SIZES[:2] if args.quick else SIZES
    steady_s = 20.0 if args.quick else 60.0
    figs = [measure_size(p, pol, steady_s) for p, pol in sizes]
    rows = []
    for f in figs:
        req = f.requests
        lists = ", ".join(f"{req[f'list {r}']} {r}" for r in ("pods", "namespaces", "networkpolicies", "clusternetworkpolicies") if req[f"list {r}"])
        target_ready, target_rss = TARGETS.get(f.pods, ("—", "—"))
        rows.append([f"{f.pods:,} / {f.policies:,}", f"{f.fill:.0f} s", f"{f.ready:.2f} s", f"{f.cpu:.2f} s", f"{f.rss_ready:.0f} MB",
                     f"{f.settle:.1f} s", f"{f.rss_steady:.0f} MB", lists, str(req["list page pods"]),
                     str(sum(v for k, v in req.items() if k.startswith("watch "))),
                     f"{f.churn_events:,} in {f.churn_write:.1f} s", f"{f.churn_programmed * 1e3:.0f} ms",
                     f"{f.readyz_checks - f.readyz_misses} of {f.readyz_checks}", f"{target_ready}, {target_rss}"])
    plot(figs)
    return [
        "etcd and the pinned kube-apiserver alone (no controller-manager, scheduler or kubelets), filled through the API "
        f"with {NODES:,} Node objects, {NAMESPACES} namespaces, the pods (bound at creation, then given `status.podIPs` through "
        "the status subresource as a kubelet does; labels app/tier/version/pod-template-hash) and NetworkPolicies at a tenth "
        "of the pods (pod and namespace selectors, ipBlocks with except, named and numbered ports, one in five with egress). "
        f"One agent (`policyd run`, address dispatch) on `{NODE}` with {LOCAL} local pods, in a network namespace of its own, "
        "with a client certificate of its own: its requests are counted from the API server's audit log (after the steady "
        "window: the initial lists, kopf's own listing and watches). Ready = `/readyz` 200; steady = the largest RSS over "
        "a minute once kopf has delivered its listing. 1 % churn: as many pods deleted and created (two writes each) as fast "
        "as the API server takes them (64 concurrent requests), the last a new local pod a policy isolates; measured from "
        "the last write to its address in the node's verdict map, /readyz asked every 0.5 s throughout.",
        "",
        *report.table(["pods / policies", "fill", "ready", "agent CPU to ready", "RSS at ready", "kopf's listing after ready",
                       "RSS steady", "lists", "pod list pages", "watches", "1 % churn writes", "last write → programmed",
                       "/readyz during churn", "target (ready, RSS steady)"], rows),
        "",
        "Plot: [scale.png](scale.png).",
        "",
        "![time to ready and memory against cluster size](scale.png)",
    ]


def plot(figs: list[SizeFigures]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [f.pods for f in figs]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, [f.ready for f in figs], "o-", label="ready (s)")
    ax.plot(x, [f.cpu for f in figs], "s--", label="agent CPU to ready (s)")
    ax.set_xlabel("pods in the cluster")
    ax.set_ylabel("seconds")
    ax2 = ax.twinx()
    ax2.plot(x, [f.rss_steady for f in figs], "^-", color="tab:red", label="RSS steady (MB)")
    ax2.set_ylabel("MB")
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [str(line.get_label()) for line in lines], loc="upper left")
    ax.set_title("policyd against the real API server")
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "scale.png", dpi=100)


if __name__ == "__main__":
    sizes = [int(a) for a in sys.argv[1:]] or [1_000]
    for n in sizes:
        print(json.dumps({k: (dict(v) if isinstance(v, Counter) else v) for k, v in measure_size(n, n // 10, 20.0).__dict__.items()}))
