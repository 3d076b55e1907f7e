"""The cluster agent on a real cluster (the chart's DaemonSet, watching a real
kube-apiserver through its ServiceAccount): relabelling moves a pod in and out of a
policy (and the drop log, in `kubectl logs`, names the policy that dropped; the rule counters on
/metrics count it), an Admin ClusterNetworkPolicy overrides it and goes with its deletion, a named port that resolves nowhere gives one Warning Event per node (naming the
node and the action), a restart of every agent posts none again, the agent's only writes
are Events (the API server's audit log says so), metrics and readiness are served on the
host network, and `helm uninstall` leaves the ruleset enforcing.

The fault the real server cannot be made to produce on demand (a watch lost while an object
is deleted and the history compacted) stays in tests/e2e/test_cluster_agent.py."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest
import yaml

from policyd.lab.netns import http_get
from realcluster.cluster import Cluster, ClusterError, rollout
from realcluster.paths import k8s_bin
from realcluster.walkthrough import POLICY, RELEASE, RELEASE_NS, WORKLOADS, cleanup_node, cleanup_nodes, helm_uninstall, install_chart, pods_of

AGENT_USER = f"system:serviceaccount:{RELEASE_NS}:{RELEASE}"
SERIES = [  # what the metrics endpoint must serve
    "policyd_event_to_programmed_seconds_bucket", "policyd_sync_duration_seconds_count{kind=\"partial\"}",
    "policyd_sync_duration_seconds_count{kind=\"full\"}", "policyd_transaction_operations_total",
    "policyd_apply_errors_total", "policyd_local_pods_enforced", "policyd_policies", "policyd_sets",
    "policyd_set_elements", "policyd_invalid_policies", "policyd_ready", "policyd_rejected_objects_total",
    "policyd_kernel_leftovers_total",
]


def tcp(cluster: Cluster, source: str, address: str, port: int = 80) -> bool:
    """An HTTP answer from `address:port`. Busybox nc half-closes when its input ends, and the
    agents' aiohttp server then drops the request unanswered: port 80 (busybox httpd) is
    asked at once, other ports with the input held open for a second."""
    request = "printf 'GET / HTTP/1.0\\r\\n\\r\\n'" + ("" if port == 80 else "; sleep 1")
    cmd = f"({request}) | nc -w 2 {address} {port}"
    return "HTTP/1." in cluster.kubectl("exec", source, "--", "sh", "-c", cmd, check=False, timeout=30).stdout


def eventually(check, want: bool, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while check() != want:
        assert time.monotonic() < deadline, f"{what}: still {not want} after {timeout:.0f} s"
        time.sleep(0.5)


def agent_logs(cluster: Cluster, node: str) -> str:
    """`kubectl logs` of the policyd pod on `node`."""
    pods = json.loads(cluster.kubectl("get", "pods", "-n", RELEASE_NS, "-l", "app.kubernetes.io/name=policyd", "-o", "json").stdout)
    pod = next(p["metadata"]["name"] for p in pods["items"] if p["spec"].get("nodeName") == node)
    return cluster.kubectl("logs", "-n", RELEASE_NS, pod, check=False).stdout


def warning_events(cluster: Cluster, reason: str) -> list[dict]:
    items = json.loads(cluster.kubectl("get", "events", "-n", "default", "-o", "json").stdout)["items"]
    return [e for e in items if e.get("reason") == reason]


def scraped_by_prometheus(c: Cluster) -> None:
    """A real Prometheus scrapes both agents through the scrape configuration the Prometheus
    Operator makes of the chart's ServiceMonitor (its Service is installed; the operator's
    CRDs are not: the ServiceMonitor comes from `helm template`; the Service's endpoints are
    discovered as Kubernetes discovery would, see realcluster/prometheus.py), loads the chart's alert
    rules and answers every dashboard query. The series exist with sane values, every rule
    evaluates, none fires on this healthy cluster, and no dashboard panel is empty."""
    from realcluster import prometheus
    from realcluster.paths import HELM
    from tests.chart.test_monitoring import ALERTS, CHART, DASHBOARD, dashboard_queries

    rendered = c.run_in_fabric([str(HELM), "template", RELEASE, str(CHART), "-n", RELEASE_NS, "--show-only", "templates/monitoring.yaml",
                                "--set", "monitoring.serviceMonitor.enabled=true", "--set", "monitoring.serviceMonitor.interval=1s"]).stdout
    (monitor,) = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "ServiceMonitor"]
    with prometheus.running(c, monitor, [ALERTS]) as prom:
        def targets_up() -> bool:
            return sorted(t["labels"].get("node", "") for t in prom.targets() if t["health"] == "up") == ["node-1", "node-2"]

        eventually(targets_up, True, "both agents scraped (Prometheus's targets)", timeout=30)
        eventually(lambda: len(prom.query("rate(policyd_watch_events_total[1m])")) > 0, True, "two scrapes of each agent", timeout=15)
        ready = prom.query("policyd_ready")
        assert sorted(r["metric"]["node"] for r in ready) == ["node-1", "node-2"] and all(r["value"][1] == "1" for r in ready), ready
        for r in ready:  # labelled as the operator labels them: the alerts' {{ $labels }} need these
            assert r["metric"]["container"] == "policyd" and r["metric"]["namespace"] == RELEASE_NS and r["metric"]["pod"].startswith(RELEASE)
            assert r["metric"]["job"] == f"{RELEASE}-metrics" and r["metric"]["endpoint"] == "metrics"
        for r in prom.query('process_resident_memory_bytes{container="policyd"}'):
            assert 20e6 < float(r["value"][1]) < 384 * 2**20, r  # below the chart's memory limit
        assert all(float(r["value"][1]) >= 2 for r in prom.query("policyd_policies")), "the walkthrough's policies"
        assert prom.query("sum(policyd_event_to_programmed_seconds_count)")[0]["value"][1] != "0"
        empty = [q for q in dashboard_queries(json.loads(DASHBOARD.read_text())) if not prom.query(q)]
        assert not empty, f"dashboard queries with no data: {empty}"
        eventually(lambda: all(r.get("lastEvaluation", "").startswith("20") for r in prom.rules()), True, "every rule evaluated", timeout=10)
        rules = prom.rules()
        assert len(rules) == 7 and all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
        assert not [r["name"] for r in rules if r["state"] != "inactive"], "an alert on a healthy cluster"


def test_agent_on_a_real_cluster(cluster: Cluster) -> None:
    c = cluster
    say: list[str] = []
    install_chart(c, "nftables", say.append, values=("dropLog.enabled=true", "ruleCounters=true", "monitoring.service=true"))
    c.kubectl("apply", "-f", str(WORKLOADS))
    for app in ("backend", "frontend", "unallowed"):
        rollout(c, f"deployment/{app}", "default", say.append)
    walker = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "walker", "namespace": "default", "labels": {"app": "unallowed"}},
              "spec": {"nodeName": "node-1", "terminationGracePeriodSeconds": 1, "containers": [
                  {"name": "c", "image": "localhost/policyd/testbox:1", "imagePullPolicy": "Never", "command": ["sleep", "2147483647"]}]}}
    c.kubectl("apply", "-f", "-", input=json.dumps(walker))
    c.kubectl("wait", "--for=condition=Ready", "pod/walker", "--timeout=60s")
    backend = next(p for p in pods_of(c) if p["app"] == "backend" and p["node"] == "node-2")

    c.kubectl("apply", "-f", str(POLICY))
    eventually(lambda: tcp(c, "walker", backend["ip"]), False, "unallowed walker → backend after the policy")
    # The drop log (dropLog.enabled): node-2's agent says which policy dropped the walker.
    want = f"drop ingress default/{backend['name']} ← default/walker TCP/80: isolated by 1 NetworkPolicy " \
           "(default/allow-frontend-to-backend), no rule allows"
    eventually(lambda: want in agent_logs(c, "node-2"), True, "the drop in node-2's agent log (kubectl logs)", timeout=10)

    # Relabelled with kubectl: the pod moves into the allowed set, and out again.
    c.kubectl("label", "pod", "walker", "app=frontend", "--overwrite")
    eventually(lambda: tcp(c, "walker", backend["ip"]), True, "walker relabelled frontend → backend")

    # A ClusterNetworkPolicy (the chart installs its CRD; node-2's agent enforces it at the
    # backend): an Admin Deny beats the NetworkPolicy's allow, and goes when it is deleted.
    def app(name: str) -> dict:
        return {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": name}}}}

    deny = {"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy", "metadata": {"name": "deny-frontend"},
            "spec": {"tier": "Admin", "priority": 10, "subject": app("backend"),
                     "ingress": [{"name": "no-frontend", "action": "Deny", "from": [app("frontend")]}]}}
    c.kubectl("apply", "-f", "-", input=json.dumps(deny))
    eventually(lambda: tcp(c, "walker", backend["ip"]), False, "Admin ClusterNetworkPolicy Deny over the NetworkPolicy's allow")
    c.kubectl("delete", "clusternetworkpolicy", "deny-frontend")
    eventually(lambda: tcp(c, "walker", backend["ip"]), True, "the ClusterNetworkPolicy deleted")

    # A `nodes` peer: the walker's egress to the nodes' addresses on the agents' metrics port
    # (host network), denied by node label; the other node's address too, and back.
    node_ips = [n.ip for n in c.layout.nodes]
    assert all(tcp(c, "walker", ip, 9808) for ip in node_ips), "the agents' metrics port before the policy"
    no_nodes = {"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy", "metadata": {"name": "no-node-metrics"},
                "spec": {"tier": "Admin", "priority": 11, "subject": app("frontend"),
                         "egress": [{"name": "no-metrics", "action": "Deny", "to": [{"nodes": {"matchLabels": {"kubernetes.io/os": "linux"}}}],
                                     "protocols": [{"tcp": {"destinationPort": {"number": 9808}}}]}]}}
    c.kubectl("apply", "-f", "-", input=json.dumps(no_nodes))
    for ip in node_ips:
        eventually(lambda ip=ip: tcp(c, "walker", ip, 9808), False, f"walker → node {ip}:9808 denied by the nodes peer")
    assert tcp(c, "walker", backend["ip"]), "only the nodes' addresses"
    c.kubectl("delete", "clusternetworkpolicy", "no-node-metrics")
    for ip in node_ips:
        eventually(lambda ip=ip: tcp(c, "walker", ip, 9808), True, f"walker → node {ip}:9808 after the policy's deletion")

    c.kubectl("label", "pod", "walker", "app=unallowed", "--overwrite")
    eventually(lambda: tcp(c, "walker", backend["ip"]), False, "walker relabelled back → backend")

    # A named port no backend pod declares: isolated, nothing allowed, one Event per node
    # that runs backend pods, naming the node and the action.
    named = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "metrics-port", "namespace": "default"},
             "spec": {"podSelector": {"matchLabels": {"app": "backend"}}, "ingress": [{"ports": [{"port": "metrics"}]}]}}
    c.kubectl("apply", "-f", "-", input=yaml.safe_dump(named))
    eventually(lambda: len(warning_events(c, "NamedPortUnresolved")) >= 2, True, "NamedPortUnresolved Events from both nodes")
    events = warning_events(c, "NamedPortUnresolved")
    assert sorted(e["reportingInstance"] for e in events) == ["node-1", "node-2"], events
    for e in events:
        assert e["action"] == "AllowNothingOnPort" and e["reportingComponent"] == "policyd"
        assert e["involvedObject"]["name"] == "metrics-port" and "default/backend" in e["message"]

    # Every agent restarted: the unchanged finding is not posted again.
    c.kubectl("delete", "pods", "-n", RELEASE_NS, "-l", "app.kubernetes.io/name=policyd", "--wait=true")
    rollout(c, f"daemonset/{RELEASE}", RELEASE_NS, say.append)
    # Wait for each new agent's decision (it logs that the Event was posted before), then count.
    eventually(lambda: all("NamedPortUnresolved on default/metrics-port was posted before" in agent_logs(c, n) for n in ("node-1", "node-2")),
               True, "each restarted agent found the Event posted before")
    assert len(warning_events(c, "NamedPortUnresolved")) == 2, warning_events(c, "NamedPortUnresolved")

    # Metrics and readiness on the node's address (host network), each on its own port; with
    # ruleCounters, the walker's dropped probes are counted on backend's isolation, by policy.
    assert not tcp(c, "walker", backend["ip"])
    node = c.layout.nodes[1]
    code, text = http_get(c.layout.fabric, f"http://{node.ip}:9808/metrics")
    assert code == 200 and all(s in text for s in SERIES), [s for s in SERIES if s not in text]
    drops = re.search(r'^policyd_rule_packets_total\{direction="ingress",kind="drop",namespace="default",'
                      r'policy="default/allow-frontend-to-backend,default/metrics-port",rule=""\} (\S+)$', text, re.M)
    assert drops and float(drops.group(1)) >= 1, [x for x in text.splitlines() if x.startswith("policyd_rule_packets")]
    # `policyd explain --hits` on the live cluster reads the same counter from node-2's agent.
    proc = c.run_in_fabric([sys.executable, "-m", "policyd", "explain", "--kubeconfig", str(c.layout.kubeconfig), "--hits",
                            "--from", "default/walker", "--to", f"default/{backend['name']}"], check=False)
    assert proc.returncode == 1 and re.search(r"counted on node-2: ingress isolation of default pods by "
                                              r"default/allow-frontend-to-backend,default/metrics-port: [1-9]\d* packets", proc.stdout), \
        proc.stdout + proc.stderr
    # The same through kubectl itself: it finds the kubectl-policyd plugin on PATH (the package
    # installs it), which reads $KUBECONFIG's current context and its namespace (default).
    venv_bin = str(Path(sys.executable).parent)
    proc = c.run_in_fabric(["env", f"PATH={venv_bin}:{os.environ['PATH']}", str(k8s_bin("kubectl")), "policyd", "explain", "walker",
                            backend["name"], "--hits"], check=False)
    assert proc.returncode == 1 and re.search(r"counted on node-2: .*: [1-9]\d* packets", proc.stdout), proc.stdout + proc.stderr
    assert "policyd_ready 1.0" in text
    code, body = http_get(c.layout.fabric, f"http://{node.ip}:9809/readyz")
    doc = json.loads(body)
    assert code == 200 and doc["ready"] and doc["initial_lists_complete"] and "Pod" in doc["seconds_since_watch_event"]
    assert (doc["kind"], doc["version"]) == ("AgentStatus", 1), "the body names its shape (docs/json.md)"

    scraped_by_prometheus(c)

    # `helm uninstall` leaves the ruleset: backend stays isolated without any agent, until
    # `policyd cleanup` on each node removes it.
    c.kubectl("delete", "networkpolicy", "metrics-port")
    eventually(lambda: tcp(c, "walker", backend["ip"]), False, "allow-frontend-to-backend alone")
    frontend = next(p for p in pods_of(c) if p["app"] == "frontend")
    # While the agent runs it would re-create what cleanup removes: cleanup refuses.
    with pytest.raises(ClusterError, match="a policyd agent running in this network namespace would re-create it"):
        cleanup_node(c, backend["node"], "nftables")
    assert not tcp(c, "walker", backend["ip"]), "still enforced after the refused cleanup"
    helm_uninstall(c)
    assert not tcp(c, "walker", backend["ip"]) and tcp(c, frontend["name"], backend["ip"])
    cleanup_nodes(c, "nftables")
    assert tcp(c, "walker", backend["ip"])
    c.kubectl("delete", "-f", str(POLICY))
    c.kubectl("delete", "pod", "walker")
    c.kubectl("delete", "-f", str(WORKLOADS), "--wait=true", timeout=120)

    # The agents' only writes were Events (every write is in the API server's audit log).
    writes = [json.loads(line) for line in c.audit_log.read_text().splitlines() if line.strip()]
    mine = [w for w in writes if w["user"]["username"] == AGENT_USER]
    assert mine, "the audit log shows no write by the agent at all (not even its Events)"
    assert {(w["verb"], w["objectRef"]["resource"]) for w in mine} == {("create", "events")}, mine


def test_the_agent_image_is_small_and_carries_only_the_agent():
    """The image the chart runs (built from the Dockerfile, as in every test here) is at
    most 150 MiB and holds what `policyd run` uses: no package manager, pip or `kubernetes`
    client; Python, nft, iptables-legacy and ipset are there."""
    import tarfile

    from realcluster.images import build_policyd

    archive = build_policyd(lambda s: None).archive
    assert archive.stat().st_size <= 150 * 2**20, f"{archive.name}: {archive.stat().st_size / 2**20:.0f} MiB"
    with tarfile.open(archive) as outer:
        layer = next(m for m in outer.getmembers() if m.name.endswith(".tar") and m.size > 2**20)
        with tarfile.open(fileobj=outer.extractfile(layer)) as inner:
            names = {n.removeprefix("./").removeprefix("/") for n in inner.getnames()}
    site = next(n for n in names if n.endswith("/site-packages")).rstrip("/")
    for wanted in ("usr/bin/python3.11", "usr/sbin/nft", "usr/sbin/iptables-legacy-restore", "usr/sbin/ipset",
                   "opt/policyd/.venv/bin/policyd", f"{site}/kopf", f"{site}/policyd", f"{site}/nftables.py"):
        assert wanted in names, wanted
    for unwanted in ("usr/bin/apt-get", "usr/bin/dpkg", f"{site}/pip", f"{site}/kubernetes", f"{site}/setuptools"):
        assert unwanted not in names, unwanted
