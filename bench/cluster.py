"""A benchmark cluster: one lab node (routed, interface dispatch) running the real agent
(`policyd run`, kopf) against the test API server (harness/kubeapi) in the fabric namespace.

The node holds `local` pods: a client and a server with real network namespaces (probes
and load run between them) and the rest as host-side veths with a /32 route each, which is
all the agent looks at. Remote pods exist only in the API. Objects are written straight
into the API server's store (the watch event is the "API event"; an HTTP client in Python
would add its own latency to every figure).
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from report import histogram_quantile  # noqa: E402

from harness.kubeapi.server import KINDS, KubeAPI  # noqa: E402
from policyd.dataplane.cni import calico_interface  # noqa: E402
from policyd.lab.netns import delete_namespaces, entered, http_get, sh  # noqa: E402
from policyd.lab.topology import FABRIC_NET, Topology  # noqa: E402
from policyd.model.objects import ContainerPort, Pod  # noqa: E402
from realcluster.processes import terminate  # noqa: E402

NODE = "node-0"
POD_CIDR = ipaddress.ip_network("10.64.0.0/24")
CLIENT_IP, SERVER_IP = "10.64.0.2", "10.64.0.3"
REMOTE_BASE = ipaddress.ip_address("10.96.0.0")  # a /12: room for a million remote pods
SLOT_BASE = 200  # 10.64.0.200+: host interfaces for pods that come and go (churn)
METRICS_PORT, HEALTH_PORT = 9808, 9809
APPS = [f"app{i}" for i in range(20)]
TEAMS = ["a", "b", "c", "d", "e"]
NAMESPACE, POD, POLICY = (next(k for k in KINDS if k.kind == n) for n in ("Namespace", "Pod", "NetworkPolicy"))
# What the server lets the client reach; the probes of scenario 1 use ports from PROBE_PORT0.
SERVED_PORTS = [("TCP", 80), ("TCP", 5201), ("UDP", 5201)]
PROBE_PORT0 = 20000


def pod_doc(ns: str, name: str, labels: dict[str, str], node: str, addr: str) -> dict:
    return {"metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "registry.invalid/none",
                                                       "ports": [{"name": "http", "containerPort": 80}]}]},
            "status": {"phase": "Running", "podIP": addr, "podIPs": [{"ip": addr}]}}


def remote_pod(i: int, n_ns: int) -> dict:
    return pod_doc(f"ns{i % n_ns}", f"r{i}", {"app": APPS[(i // 7) % len(APPS)], "tier": "web" if i % 3 else "db"},
                   f"node-{1 + i % 100}", str(REMOTE_BASE + 1 + i))


def policy_doc(ns: str, name: str, selector: dict, ingress: list[dict]) -> dict:
    return {"metadata": {"name": name, "namespace": ns},
            "spec": {"podSelector": {"matchLabels": selector}, "policyTypes": ["Ingress"], "ingress": ingress}}


def synthetic_peer(i: int, rnd: random.Random, apps: list[str] = APPS, teams: list[str] = TEAMS) -> dict[str, Any]:
    """Peer i of the mix of bench/synthetic.py: pod selectors, namespace+pod selectors,
    ipBlocks with except, pods of every namespace."""
    kind = i % 4
    if kind == 0:
        return {"podSelector": {"matchLabels": {"app": rnd.choice(apps)}}}
    if kind == 1:
        return {"podSelector": {"matchLabels": {"tier": "web"}}, "namespaceSelector": {"matchLabels": {"team": rnd.choice(teams)}}}
    if kind == 2:
        third = rnd.randrange(256)
        return {"ipBlock": {"cidr": f"172.{16 + third % 16}.0.0/16", "except": [f"172.{16 + third % 16}.{third}.0/24"]}}
    return {"podSelector": {"matchLabels": {"app": rnd.choice(apps)}}, "namespaceSelector": {}}


def synthetic_policy(i: int, n_ns: int, rnd: random.Random) -> dict:
    """The mix of bench/synthetic.py (`synthetic_peer`); numbered and named ports."""
    peer = synthetic_peer(i, rnd)
    port = {"protocol": "TCP", "port": "http" if i % 5 == 0 else 80 + i % 10}
    return policy_doc(f"ns{i % n_ns}", f"pol{i}", {"app": rnd.choice(APPS)}, [{"from": [peer], "ports": [port]}])


def start_until_ready(netns: str, args: list[str], log: Path, http: Any, timeout: float,
                      cwd: Path | None = None) -> tuple[subprocess.Popen, float]:
    """`policyd run` (args) in a network namespace, appending to `log`; (the process, seconds
    until `http("/readyz")` answers 200)."""
    with open(log, "ab") as out:
        t0 = time.monotonic()
        proc = subprocess.Popen(["ip", "netns", "exec", netns, *args], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=cwd)
    while time.monotonic() < t0 + timeout:
        if http("/readyz")[0] == 200:
            return proc, time.monotonic() - t0
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited: {log.read_text()[-3000:]}")
        time.sleep(0.01)
    stop(proc)
    raise RuntimeError(f"agent not ready within {timeout} s: {log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, and SIGKILL if it has not ended 10 s later."""
    terminate(proc)


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident set of a process in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def probe_policy(k: int) -> dict:
    """Scenario 1's new policies: each opens one more port from the client to the server."""
    return policy_doc("bench", f"open-{k}", {"app": "server"},
                      [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}], "ports": [{"protocol": "TCP", "port": PROBE_PORT0 + k}]}])


class BenchCluster:
    def __init__(self, local: int = 110, remote: int = 5_000, policies: int = 1_000, namespaces: int = 100,
                 real_pods: bool = True, slots: int = 20, resync: float = 300.0) -> None:
        self.prefix = f"pdc{uuid.uuid4().hex[:6]}"
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        self.n_local, self.n_remote, self.n_policies, self.n_ns = local, remote, policies, namespaces
        self.real_pods, self.slots, self.resync = real_pods, slots, resync
        self.topo = Topology(self.prefix, "routed", state_dir=str(self.tmp / "pods"))
        self.api = KubeAPI(bookmark_every=5.0)
        self.agent: subprocess.Popen | None = None
        self.node = self.topo.add_node(NODE, POD_CIDR)
        self.kubeconfig = self.tmp / "kubeconfig"
        self.handles: dict[str, Any] = {}

    # --- the cluster ----------------------------------------------------------------------

    def seed(self) -> None:
        """Namespaces, pods and policies, stored before the agent starts (its initial list)."""
        store = self.api._store
        for i in range(self.n_ns):
            store(NAMESPACE, "", {"metadata": {"name": f"ns{i}", "labels": {"team": TEAMS[i % len(TEAMS)]}}}, "ADDED")
        store(NAMESPACE, "", {"metadata": {"name": "bench"}}, "ADDED")
        for i in range(self.n_remote):
            store(POD, f"ns{i % self.n_ns}", remote_pod(i, self.n_ns), "ADDED")
        store(POD, "bench", pod_doc("bench", "client", {"app": "client"}, NODE, CLIENT_IP), "ADDED")
        store(POD, "bench", pod_doc("bench", "server", {"app": "server"}, NODE, SERVER_IP), "ADDED")
        veths = []
        for i in range(self.n_local - 2):
            addr = str(POD_CIDR.network_address + 10 + i)
            doc = pod_doc(f"ns{i % self.n_ns}", f"l{i}", {"app": APPS[i % len(APPS)], "tier": "web" if i % 3 else "db"}, NODE, addr)
            store(POD, f"ns{i % self.n_ns}", doc, "ADDED")
            veths.append((calico_interface(f"ns{i % self.n_ns}/l{i}"), addr))
        veths += [(f"calislot{s}", self.slot_ip(s)) for s in range(self.slots)]
        if not self.real_pods:
            veths += [(calico_interface(f"bench/{name}"), addr) for name, addr in (("client", CLIENT_IP), ("server", SERVER_IP))]
        self._host_interfaces(veths)
        rnd = random.Random(1)
        for i in range(self.n_policies):
            doc = synthetic_policy(i, self.n_ns, rnd)
            store(POLICY, doc["metadata"]["namespace"], doc, "ADDED")
        ports = [{"protocol": p, "port": n} for p, n in SERVED_PORTS]
        store(POLICY, "bench", policy_doc("bench", "server-from-client", {"app": "server"},
                                          [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}], "ports": ports}]), "ADDED")
        if self.real_pods:
            for name, addr in (("client", CLIENT_IP), ("server", SERVER_IP)):
                pod = Pod("bench", name, {"app": name}, NODE, (ipaddress.ip_address(addr),), (ContainerPort(80, "TCP", "http"),))
                self.handles[name] = self.topo.add_pod(pod, [], [])
            self.topo.wait_ready(handles=list(self.handles.values()))

    def slot_ip(self, s: int) -> str:
        return str(POD_CIDR.network_address + SLOT_BASE + s)

    def _host_interfaces(self, veths: list[tuple[str, str]]) -> None:
        """Host-side veths with a /32 route each (the peer end stays on the node, down):
        what a CNI leaves behind for a pod, minus the pod."""
        lines = []
        for i, (dev, addr) in enumerate(veths):
            lines += [f"link add {dev} type veth peer name pb{i}", f"link set {dev} up", f"route add {addr}/32 dev {dev}"]
        batch = self.tmp / "veths.batch"
        batch.write_text("\n".join(lines) + "\n")
        sh("ip", "-batch", str(batch), ns=self.node.netns)

    def store(self, kind, ns: str, doc: dict, typ: str = "ADDED") -> float:
        """Write one object through the server's loop; returns the monotonic time just before."""
        t = time.monotonic()
        self.api.call(self.api._store, kind, ns, json.loads(json.dumps(doc)), typ)
        return t

    # --- the agent ------------------------------------------------------------------------

    def serve(self) -> None:
        with entered(self.topo.fabric):
            sock = socket.create_server((str(FABRIC_NET.broadcast_address - 1), 0))
        url = self.api.serve(sock=sock)
        self.kubeconfig.write_text(yaml.safe_dump(self.api.kubeconfig(url)))

    def start_agent(self, timeout: float = 120.0) -> float:
        """Start `policyd run` on an empty kernel table; seconds until /readyz answers 200."""
        sh("nft", "delete", "table", "inet", "policyd", ns=self.node.netns, check=False)
        args = [sys.executable, "-m", "policyd", "run", "--node-name", NODE, "--kubeconfig", str(self.kubeconfig),
                "--dispatch-mode", "interface", "--interface-prefix", "cali", "--metrics-port", str(METRICS_PORT), "--health-port", str(HEALTH_PORT),
                "--resync", str(self.resync)]
        self.agent, seconds = start_until_ready(self.node.netns, args, self.tmp / "agent.log", self.http, timeout)
        return seconds

    def wait_settled(self, timeout: float = 120.0) -> None:
        """Until kopf has delivered its own first listing of the kinds it watches (it starts
        after our lists; Pods are watched by the agent's lean watch, which lists nothing
        again) and the relist that follows it has run: the steady state the event
        benchmarks measure."""
        want = {"Namespace": self.n_ns + 4, "NetworkPolicy": self.n_policies + 1}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = self.metrics()
            if all(m.get(f'policyd_watch_events_total{{kind="{k}"}}', 0) >= n for k, n in want.items()):
                time.sleep(3.0)  # the relist comes 2 s after the last listing event
                return
            time.sleep(0.1)
        raise RuntimeError(f"kopf did not deliver its first listing within {timeout} s: {self.log_tail()}")

    def stop_agent(self) -> None:
        if self.agent is not None:
            stop(self.agent)
        self.agent = None

    def rss_mb(self) -> tuple[float, float]:
        """(current, peak) resident set of the agent process in MB."""
        assert self.agent is not None
        return rss_mb(self.agent.pid)

    def cpu_seconds(self) -> float:
        """User + system CPU the agent process has used so far (its main and worker threads)."""
        assert self.agent is not None
        return cpu_seconds(self.agent.pid)

    def http(self, path: str) -> tuple[int, str]:
        port = METRICS_PORT if path == "/metrics" else HEALTH_PORT
        return http_get(self.topo.fabric, f"http://{self.node.fabric_ip}:{port}{path}")

    def metrics(self) -> dict[str, float]:
        code, text = self.http("/metrics")
        if code != 200:
            raise RuntimeError(f"/metrics: {code} {text[:200]}")
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def log_tail(self, n: int = 3000) -> str:
        p = self.tmp / "agent.log"
        return p.read_text()[-n:] if p.exists() else ""

    def teardown(self) -> None:
        self.stop_agent()
        self.api.stop()
        self.topo.teardown()
        delete_namespaces(self.prefix + ".")


def histogram(before: dict[str, float], after: dict[str, float], name: str = "policyd_event_to_programmed_seconds") -> list[tuple[float, float]]:
    """The buckets of one histogram observed between two scrapes: (bound, cumulative count)."""
    out = []
    for key, v in after.items():
        if key.startswith(name + "_bucket") and "le=" in key:
            bound = key.split('le="')[1].split('"')[0]
            out.append((float("inf") if bound == "+Inf" else float(bound), v - before.get(key, 0.0)))
    return sorted(out)


def latency(before: dict[str, float], after: dict[str, float], qs=(0.5, 0.99)) -> list[float]:
    h = histogram(before, after)
    return [histogram_quantile(h, q) for q in qs]


def delta(before: dict[str, float], after: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)
