"""Faults a real API server cannot be made to produce on demand: a watch lost while a
policy is deleted and the history compacted, so the deletion is never streamed and resuming
watches get 410 Gone (only the agent's relist can reveal it); and a policy deleted and
re-created under its name in the same instant, so kopf's per-uid workers race. `policyd run` (kopf,
unmodified) runs in each node namespace of a lab topology and watches the test API server
(harness/kubeapi, held to the real server's behaviour by tests/cluster/test_kubeapi_real.py);
everything else about the agent is tested on a real cluster (tests/cluster/test_agent.py).

The API server listens inside the topology's fabric namespace, which every node reaches
over its uplink; kubectl runs in that namespace too. Nothing touches the host's network.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from harness.kubeapi.server import KubeAPI
from policyd.lab.netns import entered, http_get, list_namespaces
from policyd.lab.topology import FABRIC_NET, Topology
from policyd.model.objects import ContainerPort, Pod
from tests.helpers import ROOT, Flow, echo_servers

KUBECTL = ROOT / ".tools" / "bin" / "kubectl"
POLICY = ROOT / "examples" / "policies" / "allow-frontend-to-backend.yaml"
API_ADDR = str(FABRIC_NET.broadcast_address - 1)
METRICS_PORT, HEALTH_PORT = 9808, 9809
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
                "--dispatch-mode", self.mode, "--metrics-port", str(METRICS_PORT), "--health-port", str(HEALTH_PORT), "--resync", "5",
                "--backend", self.backend, "--revoke-connections"]
        if self.mode == "interface":
            args += ["--interface-prefix", "cali"]
        self.agents[node] = subprocess.Popen(["ip", "netns", "exec", self.topo.nodes[node].netns, *args],
                                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def http(self, node: str, path: str) -> tuple[int, str]:
        port = METRICS_PORT if path == "/metrics" else HEALTH_PORT
        return http_get(self.topo.fabric, f"http://{self.topo.nodes[node].fabric_ip}:{port}{path}", timeout=2)

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


@pytest.fixture(params=["routed-nftables", "bridge-iptables"])
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


def test_relist_repairs_a_deletion_no_watch_reported(cluster: Cluster):
    c = cluster
    c.kubectl("apply", "-f", str(POLICY))
    c.eventually({("frontend", "backend", "TCP"): True, ("unallowed", "backend", "TCP"): False})
    c.api.delete_during_outage("networkpolicies", "default", "allow-frontend-to-backend")
    c.eventually({("unallowed", "backend", "TCP"): True}, timeout=15)
    gone = [r for r in c.api.requests if r.query.get("watch") == "true" and r.path.endswith("networkpolicies")]
    assert len(gone) >= 4, "the agents did not re-watch after the drop"
    code, text = c.http("node-2", "/metrics")
    assert code == 200 and "policyd_relist_deletes_total 1.0" in text, text[-1500:]


def test_a_policy_recreated_under_its_name_is_enforced_in_its_new_form(cluster: Cluster):
    """The old object's DELETED and the new one's ADDED reach kopf back to back; kopf runs
    each uid on its own worker, so the new ADDED may be handled first. The old DELETED must
    not then remove the new policy (which would open backend to everyone). Left to the event
    loop that order never came in 80 tries, so every other re-creation sends the new ADDED
    first, and the agents' count of ignored earlier-incarnation DELETEDs shows it ran."""
    c = cluster
    c.kubectl("apply", "-f", str(POLICY))
    c.eventually({("frontend", "backend", "TCP"): True, ("unallowed", "backend", "TCP"): False})
    body = yaml.safe_load(POLICY.read_text())

    def stale() -> int:  # DELETEDs of an earlier incarnation handled after the new one's ADDED, every agent
        texts = [c.http(n, "/metrics")[1] for n in c.agents]
        return sum(int(float(m.group(1))) for t in texts for m in re.finditer(r"^policyd_stale_deletes_total (\S+)$", t, re.M))

    for i in range(6):  # every other re-creation: the new ADDED first, the order kopf's workers may take
        app = "unallowed" if i % 2 == 0 else "frontend"
        body["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app"] = app
        c.api.recreate("networkpolicies", "default", "allow-frontend-to-backend", body, added_first=i % 2 == 1)
        c.eventually({("unallowed", "backend", "TCP"): app == "unallowed", ("frontend", "backend", "TCP"): app == "frontend"})
    assert stale() >= 1, "no agent handled an old DELETED after the new ADDED: the race this test is about never ran"


def test_pods_are_watched_by_the_lean_watch_and_relisted_after_410(cluster: Cluster):
    """Pods come through the agent's own watch (kube/watch.py), not kopf: a relabel is
    streamed and enforced; a relabel made while every watch is down and the history is
    compacted is never streamed, so the watch resumes into 410 Gone, relists and enforces
    it; kopf never watches Pods."""
    c = cluster
    c.kubectl("apply", "-f", str(POLICY))
    c.eventually({("frontend", "backend", "TCP"): True, ("unallowed", "backend", "TCP"): False})
    c.kubectl("label", "pod", "unallowed", "app=frontend", "--overwrite")
    c.eventually({("unallowed", "backend", "TCP"): True})
    pod = json.loads(c.kubectl("get", "pod", "unallowed", "-o", "json").stdout)
    pod["metadata"]["labels"]["app"] = "unallowed"
    c.api.update_during_outage("pods", "default", "unallowed", pod)
    c.eventually({("unallowed", "backend", "TCP"): False, ("frontend", "backend", "TCP"): True}, timeout=15)
    watches = [r for r in c.api.requests if r.query.get("watch") == "true" and r.path.endswith("/pods")]
    assert watches and all(r.user_agent.startswith("policyd/") and r.query.get("allowWatchBookmarks") == "true"
                           for r in watches), "kopf watched Pods too"
    assert len(watches) >= 4, "each agent watched Pods again after the drop"
    assert "relisting" in c.log("node-2") and "relisted" in c.log("node-2"), c.log("node-2")


def test_a_revoked_stream_ends_within_a_second_and_an_admitted_one_flows_on(cluster: Cluster):
    """`policyd run` as deployed (revoked connections ended: the default): streams opened
    while backend admits everyone; the policy then admits frontend only. node-2's agent
    marks unallowed's TCP stream and UDP flow (crossing from node-1) after its sync; they
    stop within a second, frontend's flow on."""
    c = cluster
    backend = c.topo.pod("default/backend").netns
    with echo_servers(backend, 4):
        revoked = [Flow(c.topo.pod("default/unallowed").netns, "10.244.2.10", p) for p in ("TCP", "UDP")]
        admitted = [Flow(c.topo.pod("default/frontend").netns, "10.244.2.10", p) for p in ("TCP", "UDP")]
        policy = yaml.safe_load(POLICY.read_text())
        policy["spec"]["ingress"][0].pop("ports")  # frontend on every port: the echo servers' too
        (c.tmp / "any-port.yaml").write_text(yaml.safe_dump(policy))
        c.kubectl("apply", "-f", str(c.tmp / "any-port.yaml"))
        c.eventually({("frontend", "backend", "TCP"): True, ("unallowed", "backend", "TCP"): False})
        deadline = time.monotonic() + 1.0  # the new connection is refused: the policy is in the kernel; a second from now
        while any(f.echoes(0.2) for f in revoked):
            assert time.monotonic() < deadline, [f.name for f in revoked if f.echoes(0.2)]
        assert all(f.echoes() for f in admitted), [f.name for f in admitted if not f.echoes()]
        code, text = c.http("node-2", "/metrics")
        assert code == 200 and 'policyd_connections_cut_total{direction="ingress",tier="NetworkPolicy"} 2.0' in text, [x for x in text.splitlines() if "cut" in x]
        for f in revoked + admitted:
            f.sock.close()
