"""The cluster agent end to end: `policyd run` (kopf, unmodified) in each node namespace of a
lab topology, watching a Kubernetes-compatible API server (tests/kubeapi) over HTTP, with
the real kubectl applying the real example manifests and real packets proving enforcement.

The API server listens inside the topology's fabric namespace, which every node reaches
over its uplink; kubectl runs in that namespace too. Nothing touches the host's network.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from policyd.lab.netns import entered, http_get, list_namespaces
from policyd.lab.topology import FABRIC_NET, Topology
from policyd.model.objects import ContainerPort, Pod
from tests.kubeapi.server import KubeAPI

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = ROOT / ".tools" / "bin" / "kubectl"
POLICY = ROOT / "examples" / "policies" / "allow-frontend-to-backend.yaml"
API_ADDR = str(FABRIC_NET.broadcast_address - 1)
METRICS_PORT = 9808
SERIES = [  # what the metrics endpoint must serve (issue 5)
    "policyd_event_to_programmed_seconds_bucket", "policyd_sync_duration_seconds_count{kind=\"partial\"}",
    "policyd_sync_duration_seconds_count{kind=\"full\"}", "policyd_transaction_operations_total",
    "policyd_apply_errors_total", "policyd_local_pods_enforced", "policyd_policies", "policyd_sets",
    "policyd_set_elements", "policyd_invalid_policies", "policyd_ready",
]
PODS = [  # name, app label, node, address
    ("frontend", "frontend", "node-1", "10.244.1.10"),
    ("unallowed", "unallowed", "node-1", "10.244.1.11"),
    ("backend", "backend", "node-2", "10.244.2.10"),
]


def pod_manifest(name: str, app: str, node: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "registry.invalid/none",
                                                       "ports": [{"name": "http", "containerPort": 80}]}]}}


class Cluster:
    def __init__(self, tmp: Path, topology: str, backend: str = "nftables") -> None:
        self.backend = backend
        self.prefix = f"pdk{uuid.uuid4().hex[:6]}"
        self.tmp = tmp
        self.topo = Topology(self.prefix, topology, state_dir=str(tmp / "pods"))
        self.mode = "interface" if topology == "routed" else "address"
        self.api = KubeAPI(bookmark_every=0.5)
        self.agents: dict[str, subprocess.Popen] = {}
        self.kubeconfig = tmp / "kubeconfig"

    def start(self) -> None:
        for i, node in enumerate(("node-1", "node-2")):
            self.topo.add_node(node, ipaddress.ip_network(f"10.244.{i + 1}.0/24"))
        with entered(self.topo.fabric):
            sock = socket.create_server((API_ADDR, 0))
        url = self.api.serve(sock=sock)
        self.kubeconfig.write_text(yaml.safe_dump(self.api.kubeconfig(url)))
        manifests = self.tmp / "pods.yaml"
        manifests.write_text(yaml.safe_dump_all([pod_manifest(n, a, node) for n, a, node, _ in PODS]))
        self.kubectl("apply", "-f", str(manifests))
        handles = []
        for name, app, node, addr in PODS:
            status = {"status": {"phase": "Running", "podIP": addr, "podIPs": [{"ip": addr}]}}
            self.kubectl("patch", "pod", name, "--subresource=status", "--type=merge", "-p", json.dumps(status))
            pod = Pod("default", name, {"app": app}, node, (ipaddress.ip_address(addr),),
                      (ContainerPort(80, "TCP", "http"),))
            handles.append(self.topo.add_pod(pod, [80], []))
        self.topo.wait_ready(handles=handles)
        for node in ("node-1", "node-2"):
            self.start_agent(node)
        for node in ("node-1", "node-2"):
            self.wait_ready(node)

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = ["ip", "netns", "exec", self.topo.fabric, str(KUBECTL), "--kubeconfig", str(self.kubeconfig), *args]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {r.stderr}")
        return r

    def start_agent(self, node: str) -> None:
        log = open(self.tmp / f"agent-{node}.log", "ab")
        args = [sys.executable, "-m", "policyd", "run", "--node-name", node, "--kubeconfig", str(self.kubeconfig),
                "--dispatch-mode", self.mode, "--metrics-port", str(METRICS_PORT), "--resync", "5",
                "--backend", self.backend]
        if self.mode == "interface":
            args += ["--interface-prefix", "cali"]
        self.agents[node] = subprocess.Popen(["ip", "netns", "exec", self.topo.nodes[node].netns, *args],
                                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def http(self, node: str, path: str) -> tuple[int, str]:
        return http_get(self.topo.fabric, f"http://{self.topo.nodes[node].fabric_ip}:{METRICS_PORT}{path}", timeout=2)

    def wait_ready(self, node: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code, _ = self.http(node, "/readyz")
            if code == 200:
                return
            assert self.agents[node].poll() is None, f"agent on {node} exited: {self.log(node)}"
            time.sleep(0.05)
        raise AssertionError(f"agent on {node} not ready: {self.http(node, '/readyz')} {self.log(node)}")

    def log(self, node: str) -> str:
        return (self.tmp / f"agent-{node}.log").read_text()[-3000:]

    def probe(self, src: str, dst: str, protocol: str = "TCP") -> bool:
        addr = next(a for n, _, _, a in PODS if n == dst)
        return self.topo.probe(f"default/{src}", addr, protocol, 80 if protocol != "ICMP" else None, timeout=0.3)

    def eventually(self, want: dict[tuple[str, str, str], bool], timeout: float = 10.0) -> None:
        """Probe until every (src, dst, protocol) gives the wanted outcome."""
        deadline = time.monotonic() + timeout
        while True:
            got = {k: self.probe(*k) for k in want}
            if got == want:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"wanted {want}, observed {got}\n" + "\n".join(self.log(n) for n in self.agents))
            time.sleep(0.05)

    def stop(self) -> None:
        for p in self.agents.values():
            if p.poll() is None:
                p.terminate()
        for p in self.agents.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.api.stop()
        self.topo.teardown()


@pytest.fixture(params=["routed-nftables", "bridge-nftables", "routed-iptables", "bridge-iptables"])
def cluster(request, tmp_path):
    if not KUBECTL.exists():
        subprocess.run([str(ROOT / "scripts" / "kube-tools.sh")], check=True)
    c = Cluster(tmp_path, *request.param.split("-"))
    try:
        c.start()
        yield c
    finally:
        c.stop()
        assert not list_namespaces(c.prefix + "."), "namespaces left behind"


def test_kubectl_policies_enforced_by_the_kopf_agent(cluster: Cluster):
    c = cluster
    # No policy: everything reaches backend (ping and TCP 80).
    c.eventually({("frontend", "backend", "ICMP"): True, ("unallowed", "backend", "ICMP"): True,
                  ("unallowed", "backend", "TCP"): True})

    # allow-frontend-to-backend admits frontend pods on TCP 80 only: unallowed is blocked
    # (ping and TCP), and so is frontend's ping, which the policy does not name.
    c.kubectl("apply", "-f", str(POLICY))
    c.eventually({("frontend", "backend", "TCP"): True, ("unallowed", "backend", "TCP"): False,
                  ("unallowed", "backend", "ICMP"): False, ("frontend", "backend", "ICMP"): False,
                  ("backend", "frontend", "ICMP"): True})

    # A pod relabelled with kubectl moves into the allowed set, and out again.
    c.kubectl("label", "pod", "unallowed", "app=frontend", "--overwrite")
    c.eventually({("unallowed", "backend", "TCP"): True})
    c.kubectl("label", "pod", "unallowed", "app=unallowed", "--overwrite")
    c.eventually({("unallowed", "backend", "TCP"): False})

    # kubectl delete reopens backend.
    c.kubectl("delete", "-f", str(POLICY))
    c.eventually({("unallowed", "backend", "TCP"): True, ("frontend", "backend", "ICMP"): True})

    # The watch stream drops while the policy is deleted and the history is compacted: the
    # agents resume with an old resourceVersion, get 410 Gone, relist, and must notice the
    # deletion although no DELETED event is ever streamed.
    c.kubectl("apply", "-f", str(POLICY))
    c.eventually({("unallowed", "backend", "TCP"): False})
    c.api.delete_during_outage("networkpolicies", "default", "allow-frontend-to-backend")
    c.eventually({("unallowed", "backend", "TCP"): True}, timeout=15)
    gone = [r for r in c.api.requests if r.query.get("watch") == "true" and r.path.endswith("networkpolicies")]
    assert len(gone) >= 4, "the agents did not re-watch after the drop"

    # A named port that resolves nowhere on a selected pod: a Warning Event says so.
    bad = c.tmp / "named.yaml"
    bad.write_text(yaml.safe_dump({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                                   "metadata": {"name": "metrics-port", "namespace": "default"},
                                   "spec": {"podSelector": {"matchLabels": {"app": "backend"}},
                                            "ingress": [{"ports": [{"port": "metrics"}]}]}}))
    c.kubectl("apply", "-f", str(bad))
    deadline = time.monotonic() + 10
    events: list = []
    while time.monotonic() < deadline and not events:
        out = json.loads(c.kubectl("get", "events", "-n", "default", "-o", "json").stdout)
        events = [e for e in out["items"] if e.get("reason") == "NamedPortUnresolved"]
        time.sleep(0.1)
    assert events, "no NamedPortUnresolved event"
    assert events[0]["involvedObject"]["name"] == "metrics-port" and "default/backend" in events[0]["message"]
    c.eventually({("frontend", "backend", "TCP"): False})  # isolated, and the rule allows nothing

    # The agents never wrote to a Pod, Namespace or NetworkPolicy (only Events).
    agent_writes = [r for r in c.api.writes() if not r.user_agent.startswith("kubectl")]
    assert not agent_writes, agent_writes
    assert any(r.method == "POST" and r.path.endswith("/events") and not r.user_agent.startswith("kubectl")
               for r in c.api.requests)

    # Metrics: every listed series is served; events were committed.
    code, text = c.http("node-2", "/metrics")
    assert code == 200
    for s in SERIES:
        assert s in text, f"{s} missing from /metrics"
    count = next(float(l.split()[-1]) for l in text.splitlines() if l.startswith("policyd_event_to_programmed_seconds_count"))
    assert count > 0

    # SIGTERM leaves the ruleset in place: backend stays isolated without its agent.
    c.agents["node-2"].terminate()
    assert c.agents["node-2"].wait(10) == 0
    time.sleep(0.2)
    assert c.probe("frontend", "backend", "TCP") is False
    listing = ["nft", "list", "tables"] if c.backend == "nftables" else ["iptables-legacy-save", "-t", "filter"]
    out = subprocess.run(["ip", "netns", "exec", c.topo.nodes["node-2"].netns, *listing], capture_output=True, text=True).stdout
    assert ("inet policyd" if c.backend == "nftables" else "-A FORWARD -j POLICYD-FORWARD") in out
