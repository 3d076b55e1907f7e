"""The two measures of Kubernetes' network-policy-enforcement-latency tool, on the real
cluster (realcluster/: two nodes, bridge CNI, kube-proxy, the chart's DaemonSet with the
nftables backend):

* policy create → enforced: a server pod on node-2 is isolated for ingress; each sample
  creates a NetworkPolicy opening one more TCP port to it from the client pod on node-1,
  through the real API server; a C prober (connbench probe) inside the client pod's network
  namespace sends a fresh SYN to the next port every 10 ms, and the sample is the time from
  the API write to the first answer (accept or RST) on that port.
* pod create → reachable: the server only admits pods labelled app=bench-new; each sample
  creates such a pod on node-1 whose own script, from the moment its container starts,
  launches a connection attempt to the server every 20 ms and records the wall-clock time
  of the first one that succeeds. Reported from the API write (scheduling, sandbox, CNI and
  container start included, as Kubernetes' tool does) and from the container's start (the
  kubelet's status report of the pod IP, then policyd on the server's node).

Both with ≥ 1,000 pods in the cluster: extra pods are created bound to a node object that no
kubelet runs (`ghost`), given addresses through the status subresource as a kubelet would,
and labelled so that the selector sets the measured rules use hold hundreds of addresses.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's realcluster package

import report  # noqa: E402
from firstpacket import connbench  # noqa: E402

from policyd.lab.netns import entered, http_get  # noqa: E402
from realcluster.cluster import Cluster  # noqa: E402
from realcluster.images import TESTBOX  # noqa: E402
from realcluster.layout import Layout  # noqa: E402
from realcluster.walkthrough import install_chart  # noqa: E402

NS = "bench"
PROBE_PORT0 = 20000
GHOST_NODE = "ghost"


def say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


@dataclass
class RealResult:
    pods: int
    policy_create: list[float]
    pod_create: list[float]
    pod_start: list[float]
    seconds: float
    agent: dict[str, float]  # node-2's agent during the policy samples: mean seconds per event / per sync


def agent_means(cluster: Cluster) -> dict[str, tuple[float, float]]:
    """node-2's agent's histograms (sum, count): event → committed and partial sync time."""
    node = next(n for n in cluster.layout.nodes if n.name == "node-2")
    code, text = http_get(cluster.layout.fabric, f"http://{node.ip}:9808/metrics")
    if code != 200:
        raise RuntimeError(f"node-2's /metrics: {code}")
    got = {}
    for name, series in (("event → committed", "policyd_event_to_programmed_seconds_{}"),
                         ("sync", 'policyd_sync_duration_seconds_{}{{kind="partial"}}')):
        values = {part: next((float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                              if line.startswith(series.format(part) + " ")), 0.0) for part in ("sum", "count")}
        got[name] = (values["sum"], values["count"])
    return got


def _pod(name: str, labels: dict[str, str], node: str, command: list[str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, "labels": labels},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0, "tolerations": [{"operator": "Exists"}],
                     "containers": [{"name": "c", "image": TESTBOX, "imagePullPolicy": "Never", "command": command}]}}


def _policy(name: str, peer_app: str, port: int | None) -> dict[str, Any]:
    rule: dict[str, Any] = {"from": [{"podSelector": {"matchLabels": {"app": peer_app}}}]}
    if port is not None:
        rule["ports"] = [{"protocol": "TCP", "port": port}]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name, "namespace": NS},
            "spec": {"podSelector": {"matchLabels": {"app": "bench-server"}}, "policyTypes": ["Ingress"], "ingress": [rule]}}


def ghosts(api: Any, count: int, first: int = 0) -> None:
    """`count` pods on a node no kubelet runs, with addresses written as a kubelet would:
    a tenth of them share the client's label, a tenth the new pods' label. `first` > 0
    adds to the ghosts made before (ghost-`first` onwards, the node already there)."""
    from kubernetes import client

    core = client.CoreV1Api(api)
    if first == 0:
        core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": GHOST_NODE, "labels": {"bench": "ghost"}},
                          "spec": {"taints": [{"key": "bench/ghost", "effect": "NoSchedule"}]}})

    def one(i: int) -> None:
        app = "bench-client" if i % 10 == 0 else "bench-new" if i % 10 == 1 else f"filler-{i % 50}"
        core.create_namespaced_pod(NS, _pod(f"ghost-{i}", {"app": app}, GHOST_NODE, ["sleep", "1"]))
        ip = f"10.245.{i // 250}.{i % 250 + 2}"
        core.patch_namespaced_pod_status(f"ghost-{i}", NS, {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(first, first + count)))


def pod_netns_pid(cluster: Cluster, uid: str) -> int:
    """A process of the pod (found by its cgroup, which kubelet names after the pod's uid)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f"pod{uid}" in (entry / "cgroup").read_text():
                    return int(entry.name)
            except OSError:
                continue
    raise RuntimeError(f"no process of pod {uid}")


def wait_running(api: Any, name: str, timeout: float = 60) -> Any:
    from kubernetes import client

    core = client.CoreV1Api(api)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pod = core.read_namespaced_pod(name, NS)
        if pod.status.phase == "Running" and pod.status.pod_ip:
            return pod
        time.sleep(0.2)
    raise RuntimeError(f"pod {name} not running within {timeout} s")


def policy_create(cluster: Cluster, api: Any, server_ip: str, client_uid: str, count: int, rate: float,
                  connected: bool = False) -> list[float]:
    """`connected`: only a completed connection counts (the server must listen on every
    probed port): for agents that reject with ICMP, which a connect reads as "refused"."""
    from kubernetes import client

    net = client.NetworkingV1Api(api)
    pid = pod_netns_pid(cluster, client_uid)
    prober = subprocess.Popen(["nsenter", f"--net=/proc/{pid}/ns/net", connbench(), "probe", server_ip, str(PROBE_PORT0),
                               str(count), "10", *(["connected"] if connected else [])], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)  # the first port is seen closed before its policy exists
    created = []
    t0 = time.monotonic()
    for k in range(count):
        created.append(time.monotonic())
        net.create_namespaced_network_policy(NS, _policy(f"port-{k}", "bench-client", PROBE_PORT0 + k))
        time.sleep(max(0.0, t0 + (k + 1) / rate - time.monotonic()))
    try:
        out, _ = prober.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        prober.kill()
        out, _ = prober.communicate()
        raise RuntimeError(f"only {len(out.splitlines())} of {count} policies were seen enforced within 60 s") from None
    seen = {int(k): float(t) for k, t in (line.split() for line in out.splitlines())}
    observed = [seen[k] - created[k] for k in range(count)]
    if min(observed) < 0:
        raise RuntimeError("a port answered before its policy was created: the server is not isolated")
    return observed


# Each attempt is a new connection in the background; the first that succeeds records the
# wall clock (busybox adjtimex: microseconds) in /tmp/reached (mkdir: only the first
# successful attempt writes). Printed: start reached.
NEW_POD_SCRIPT = """
now() { adjtimex | awk '/tv_sec/ {s=$2} /tv_usec/ {u=$2} END {printf "%d.%06d", s, u}'; }
start=$(now)
while [ ! -s /tmp/reached ]; do
  (nc -w 2 SERVER 80 </dev/null >/dev/null 2>&1 && mkdir /tmp/won 2>/dev/null && now > /tmp/t && mv /tmp/t /tmp/reached) &
  usleep 20000
done
echo "reached $start $(cat /tmp/reached)"
sleep 3600
"""


def pod_create(api: Any, server_ip: str, count: int, parallel: int = 4, prefix: str = "new") -> tuple[list[float], list[float]]:
    from kubernetes import client

    core = client.CoreV1Api(api)
    script = NEW_POD_SCRIPT.replace("SERVER", server_ip)
    from_create: list[float] = []
    from_start: list[float] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        name = f"{prefix}-{i}"
        t_create = time.time()
        core.create_namespaced_pod(NS, _pod(name, {"app": "bench-new"}, "node-1", ["sh", "-c", script]))
        deadline = time.monotonic() + 60
        while True:
            try:
                line = core.read_namespaced_pod_log(name, NS).strip()
            except client.exceptions.ApiException:
                line = ""
            line = next((x for x in line.splitlines() if x.startswith("reached ")), "")
            if line:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"pod {name} did not reach the server within 60 s")
            time.sleep(0.2)
        start, reached = (float(x) for x in line.split()[1:3])
        with lock:
            from_create.append(reached - t_create)
            from_start.append(reached - start)
        core.delete_namespaced_pod(name, NS, grace_period_seconds=0)

    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, range(count)))
    return from_create, from_start


def measure(args: Any) -> list[str]:
    started = time.monotonic()
    samples = 100
    ghost_count = 1000
    layout = Layout(f"b{uuid.uuid4().hex[:6]}", cni="bridge")
    cluster = Cluster(layout)
    cluster.up(say=say)
    try:
        install_chart(cluster, "nftables", say)
        from kubernetes import client, config

        api = config.new_client_from_config(config_file=str(layout.kubeconfig))
        with entered(layout.fabric):
            core = client.CoreV1Api(api)
            core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
            say(f"{ghost_count} extra pods on a node without kubelet")
            ghosts(api, ghost_count)
            core.create_namespaced_pod(NS, _pod("server", {"app": "bench-server"}, "node-2", ["httpd", "-f", "-p", "80", "-h", "/www"]))
            core.create_namespaced_pod(NS, _pod("client", {"app": "bench-client"}, "node-1", ["sleep", "3600"]))
            server = wait_running(api, "server")
            client_pod = wait_running(api, "client")
            net = client.NetworkingV1Api(api)
            net.create_namespaced_network_policy(NS, _policy("admit-new", "bench-new", 80))
            pods = len(core.list_pod_for_all_namespaces().items)
            say(f"policy create → enforced: {samples} policies at 5/s ({pods} pods in the cluster)")
            before = agent_means(cluster)
            policy = policy_create(cluster, api, server.status.pod_ip, client_pod.metadata.uid, samples, 5.0)
            after = agent_means(cluster)
            agent = {k: (after[k][0] - before[k][0]) / max(1.0, after[k][1] - before[k][1]) for k in after}
            say(f"pod create → reachable: {samples} pods, 4 at a time")
            pod_create_s, pod_start_s = pod_create(api, server.status.pod_ip, samples)
    finally:
        cluster.down(say=say)
    r = RealResult(pods, policy, pod_create_s, pod_start_s, time.monotonic() - started, agent)
    return lines(r)


def lines(r: RealResult) -> list[str]:
    rows = [
        ["policy create → enforced (API write → first answer on the new port)", report.ms(r.policy_create)],
        ["of which node-2's agent: event → committed, and its sync (mean, from its /metrics histograms)",
         f"{r.agent['event → committed'] * 1e3:.2f} ms, {r.agent['sync'] * 1e3:.2f} ms"],
        ["pod create → reachable (API write → first connection allowed)", report.ms(r.pod_create)],
        ["pod start → reachable (container start → first connection allowed)", report.ms(r.pod_start)],
    ]
    return [
        f"Two nodes (bridge CNI, kube-proxy iptables mode), policyd from its chart (nftables), {r.pods} pods in the cluster "
        f"({len(r.policy_create)} samples each; the scenario took {r.seconds:.0f} s with cluster up and down). "
        "Policies opened one port each from the client pod (node-1) to an isolated server pod (node-2), seen by a C prober "
        "sending a fresh SYN every 10 ms; new pods, labelled as the server admits, tried a new connection every 20 ms from "
        "their own start.",
        "",
        *report.table(["measure", "samples"], rows),
    ]

