"""The README's walkthrough on the real cluster: `helm install` the chart with the local
image, the frontend/backend/unallowed Deployments (one pod of each per node) and a backend
Service, then `kubectl exec` probes — TCP to port 80 and ping — from every client pod to
every backend pod (same node and across nodes) and to the Service's ClusterIP, before the
policy, with `allow-frontend-to-backend` applied, and after it is deleted. Then egress to
domain names: cluster DNS (CoreDNS as kube-dns, realcluster/dns.py) serving
examples/fqdn/zone.db, hosts outside the cluster at its addresses, and
examples/fqdn/frontend-egress-by-name.yaml applied: each pod looks names up through the
kube-dns Service and connects at once. Then `helm uninstall` and `policyd cleanup` on every
node.

The expectation is written here from the policy's text, not computed by policyd's engine:
without the policy everything answers; with it, only frontend → backend on TCP 80.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .cluster import Cluster, ClusterError, rollout
from .dns import deploy as deploy_dns
from .dns import remove as remove_dns
from .images import POLICYD
from .paths import HELM, ROOT

Say = Callable[[str], None]
WORKLOADS = ROOT / "realcluster" / "manifests" / "walkthrough.yaml"
POLICY = ROOT / "examples" / "policies" / "allow-frontend-to-backend.yaml"
CHART = ROOT / "charts" / "policyd"
RELEASE, RELEASE_NS = "policyd", "kube-system"
PROBE_TIMEOUT = 2  # seconds a denied probe waits


@dataclass(frozen=True)
class Probe:
    source: str  # pod name
    source_app: str
    source_node: str
    target: str  # "pod <name>" or "service backend"
    target_node: str  # "" for the Service
    address: str
    protocol: str  # TCP (port 80) or ICMP

    def describe(self) -> str:
        where = "" if not self.target_node else (" same node" if self.target_node == self.source_node else " across nodes")
        return f"{self.source_app} ({self.source_node}) → {self.target} {self.address}{where} {self.protocol}"


def install_chart(cluster: Cluster, backend: str, say: Say, values: tuple[str, ...] = ()) -> None:
    """`values`: more `--set` assignments (e.g. dropLog.enabled=true)."""
    repo, tag = POLICYD.rsplit(":", 1)
    say(f"helm install {RELEASE} charts/policyd -n {RELEASE_NS} --set backend={backend}"
        + "".join(f" --set {v}" for v in values) + f" (image {POLICYD}, pullPolicy Never)")
    cluster.run_in_fabric([str(HELM), "install", RELEASE, str(CHART), "-n", RELEASE_NS,
                           "--set", f"image.repository={repo}", "--set", f"image.tag={tag}",
                           "--set", "image.pullPolicy=Never", "--set", f"backend={backend}",
                           *(a for v in values for a in ("--set", v))])
    rollout(cluster, f"daemonset/{RELEASE}", RELEASE_NS, say)


def uninstall_chart(cluster: Cluster, backend: str, say: Say) -> None:
    """`helm uninstall` leaves each node's ruleset (pods stay isolated); `policyd cleanup`
    run on each node as the README says (kubectl debug node/…, host network) removes it."""
    say(f"helm uninstall {RELEASE}, then policyd cleanup --backend {backend} on every node (kubectl debug node/…)")
    helm_uninstall(cluster)
    cleanup_nodes(cluster, backend)


def helm_uninstall(cluster: Cluster) -> None:
    """`helm uninstall --wait` waits for the DaemonSet object only; its pods are deleted by
    the garbage collector after it, and an agent still running re-creates its ruleset (a
    cleanup before then is undone), so wait for the pods to be gone too."""
    cluster.run_in_fabric([str(HELM), "uninstall", RELEASE, "-n", RELEASE_NS, "--wait", "--timeout", "60s"])
    selector = f"app.kubernetes.io/instance={RELEASE}"
    cluster.kubectl("wait", "--for=delete", "pod", "-n", RELEASE_NS, "-l", selector, "--timeout=90s", check=False, timeout=100)
    left = cluster.kubectl("get", "pods", "-n", RELEASE_NS, "-l", selector, "-o", "name").stdout.split()
    if left:
        raise ClusterError(f"helm uninstall: the agent pods are still there after 90 s: {' '.join(left)}")


def cleanup_nodes(cluster: Cluster, backend: str) -> None:
    for node in cluster.layout.nodes:
        debug_pod = cleanup_node(cluster, node.name, backend)
        if not kernel_is_clean(cluster, node.netns, backend):
            raise ClusterError(f"{node.name}: policyd's objects are still in the kernel after cleanup ({debug_pod})")


def cleanup_node(cluster: Cluster, node: str, backend: str) -> str:
    out = cluster.kubectl("debug", f"node/{node}", "--profile=sysadmin", f"--image={POLICYD}",
                          "--image-pull-policy=Never", "-q", "--", "policyd", "cleanup", "--backend", backend).stdout
    pod = next((w for w in out.split() if w.startswith("node-debugger-")), "")
    if not pod:  # kubectl -q prints nothing: find the pod by its node
        pods = json.loads(cluster.kubectl("get", "pods", "-o", "json").stdout)["items"]
        pod = next(p["metadata"]["name"] for p in pods if p["metadata"]["name"].startswith(f"node-debugger-{node}-"))
    deadline = time.monotonic() + 60
    while True:
        phase = cluster.kubectl("get", "pod", pod, "-o", "jsonpath={.status.phase}").stdout
        if phase in ("Succeeded", "Failed"):
            break
        if time.monotonic() > deadline:
            raise ClusterError(f"policyd cleanup on {node} did not finish within 60 s (pod {pod}: {phase})")
        time.sleep(0.5)
    log = cluster.kubectl("logs", pod, check=False).stdout.strip()
    cluster.kubectl("delete", "pod", pod, "--wait=false")
    if phase != "Succeeded":
        raise ClusterError(f"policyd cleanup on {node} failed: {log}")
    return log


def kernel_is_clean(cluster: Cluster, netns: str, backend: str) -> bool:
    import subprocess

    if backend == "nftables":
        proc = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "table", "inet", "policyd"], capture_output=True)
        return proc.returncode != 0
    save = subprocess.run(["ip", "netns", "exec", netns, "iptables-legacy-save"], capture_output=True, text=True).stdout
    sets = subprocess.run(["ip", "netns", "exec", netns, "ipset", "list", "-n"], capture_output=True, text=True).stdout
    return "POLICYD" not in save and "policyd" not in sets


def pods_of(cluster: Cluster, namespace: str = "default") -> list[dict[str, str]]:
    """Running pods: name, app label, node, `ip` (the primary address) and `ips` (every
    address, space-separated: both families on a dual-stack cluster)."""
    items = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
    return [{"name": p["metadata"]["name"], "app": p["metadata"].get("labels", {}).get("app", ""),
             "node": p["spec"].get("nodeName", ""), "ip": p["status"].get("podIP", ""),
             "ips": " ".join(a["ip"] for a in p["status"].get("podIPs") or []) or p["status"].get("podIP", "")}
            for p in items if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]


def plan_probes(cluster: Cluster) -> list[Probe]:
    pods = pods_of(cluster)
    service_ip = cluster.kubectl("get", "service", "backend", "-o", "jsonpath={.spec.clusterIP}").stdout.strip()
    backends = [p for p in pods if p["app"] == "backend"]
    probes = []
    for src in (p for p in pods if p["app"] in ("frontend", "unallowed")):
        for proto in ("TCP", "ICMP"):
            for dst in backends:  # every address of the pod: each family of a dual-stack cluster
                probes += [Probe(src["name"], src["app"], src["node"], f"pod {dst['name']}", dst["node"], ip, proto)
                           for ip in dst["ips"].split()]
        probes.append(Probe(src["name"], src["app"], src["node"], "service backend", "", service_ip, "TCP"))
    return probes


def probe(cluster: Cluster, p: Probe) -> bool:
    """True when the target answered: an HTTP reply on TCP 80, an echo reply for ICMP."""
    if p.protocol == "TCP":
        return connect(cluster, p.source, p.address)
    proc = cluster.kubectl("exec", p.source, "--", "ping", "-c", "1", "-W", str(PROBE_TIMEOUT), p.address, check=False, timeout=30)
    return proc.returncode == 0


def check_phase(cluster: Cluster, name: str, expect: Callable[[Probe], bool], say: Say, attempts: int = 3) -> list[str]:
    """Probe everything; a probe that disagrees is retried (a policy takes a moment to
    reach the kernel), and what still disagrees is returned."""
    probes = plan_probes(cluster)
    if len(probes) < 20:
        raise ClusterError(f"expected 2 pods per app over 2 nodes, found {len(pods_of(cluster))} running pods")
    wrong = probes
    for _ in range(attempts):
        with ThreadPoolExecutor(max_workers=8) as pool:
            answered = dict(zip(wrong, pool.map(lambda p: probe(cluster, p), wrong), strict=True))
        wrong = [p for p, ok in answered.items() if ok != expect(p)]
        if not wrong:
            break
        time.sleep(1)
    allowed = sum(1 for p in probes if expect(p))
    say(f"{name}: {len(probes)} probes, {allowed} expected to answer, {len(probes) - allowed} to time out: "
        + ("all as expected" if not wrong else f"{len(wrong)} NOT as expected"))
    return [f"{name}: {p.describe()}: {'answered' if not expect(p) else 'timed out'}, expected the opposite" for p in wrong]


NAMES_POLICY = ROOT / "examples" / "fqdn" / "frontend-egress-by-name.yaml"


@dataclass(frozen=True)
class NameProbe:
    """From `source`, look `name` up through the kube-dns Service and connect to the answer's
    address on TCP 80; or, with `name` None, connect to `address` directly."""

    source: str
    source_app: str
    name: str | None
    address: str = ""

    def describe(self) -> str:
        return f"{self.source_app} {self.source} → {self.name or self.address} TCP/80"


def lookup(cluster: Cluster, pod: str, name: str, server: str, family: int) -> list[str]:
    """The addresses busybox's nslookup in `pod` prints for `name` (A or AAAA)."""
    proc = cluster.kubectl("exec", pod, "--", "nslookup", f"-type={'a' if family == 4 else 'aaaa'}", name, server, check=False, timeout=30)
    found, answers = [], False
    for line in proc.stdout.splitlines():
        if line.startswith("Name:"):
            answers = True
        elif answers and line.startswith("Address"):
            candidate = line.split(":", 1)[1].strip() if line.startswith("Address:") else line.split()[-1]
            try:
                found.append(str(ipaddress.ip_address(candidate)))
            except ValueError:
                continue
    return found


def connect(cluster: Cluster, pod: str, address: str) -> bool:
    cmd = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w {PROBE_TIMEOUT} {address} 80"
    return "HTTP/1." in cluster.kubectl("exec", pod, "--", "sh", "-c", cmd, check=False, timeout=30).stdout


def names_phase(cluster: Cluster, dns_ip: str, say: Say) -> list[str]:
    """examples/fqdn/frontend-egress-by-name.yaml: frontend pods reach the names it lists
    from their first connection after the lookup (no retry), not an unlisted name, not an
    address no listed name answered; unallowed pods (not its subject) reach everything."""
    from .dns import external_hosts

    family = cluster.layout.families[0]
    with external_hosts(cluster) as addresses:
        other = next(a for a in addresses if a.endswith(".30" if family == 4 else "::30"))
        pods = [p for p in pods_of(cluster) if p["app"] in ("frontend", "unallowed")]

        def run(probes: list[NameProbe]) -> dict[NameProbe, bool]:
            def one(p: NameProbe) -> bool:
                if p.name is None:
                    return connect(cluster, p.source, p.address)
                got = lookup(cluster, p.source, p.name, dns_ip, family)
                return bool(got) and connect(cluster, p.source, got[0])
            with ThreadPoolExecutor(max_workers=8) as pool:
                return dict(zip(probes, pool.map(one, probes), strict=True))

        failures = []
        before = run([NameProbe(p["name"], p["app"], "other.example.test") for p in pods])
        failures += [f"domainNames, no policy: {p.describe()}: timed out, expected to answer" for p, ok in before.items() if not ok]
        say(f"cluster DNS and external hosts, no policy: {len(before)} lookups and connections, "
            + ("all answered" if not failures else f"{len(failures)} NOT as expected"))
        say(f"kubectl apply -f {NAMES_POLICY.relative_to(ROOT)}")
        cluster.kubectl("apply", "-f", str(NAMES_POLICY))
        frontends = [p for p in pods if p["app"] == "frontend"]
        deadline = time.monotonic() + 30
        while any(run([NameProbe(p["name"], p["app"], None, other) for p in frontends]).values()):
            if time.monotonic() > deadline:
                failures.append(f"domainNames: {NAMES_POLICY.name} not in force 30 s after it was applied")
                break
        expect = {NameProbe(p["name"], p["app"], n): p["app"] == "unallowed" or n != "other.example.test"
                  for p in pods for n in ("api.example.test", "www.example.test", "edge.cdn.example.test", "other.example.test")}
        expect |= {NameProbe(p["name"], p["app"], None, other): p["app"] == "unallowed" for p in pods}
        got = run(list(expect))  # once: the first connection after each lookup must already be allowed
        wrong = [p for p, ok in got.items() if ok != expect[p]]
        failures += [f"domainNames: {p.describe()}: {'answered' if got[p] else 'timed out'}, expected the opposite" for p in wrong]
        say(f"{NAMES_POLICY.stem}: {len(got)} lookups and connections, {sum(expect.values())} expected to answer: "
            + ("all as expected" if not wrong else f"{len(wrong)} NOT as expected"))
        say(f"kubectl delete -f {NAMES_POLICY.relative_to(ROOT)}")
        cluster.kubectl("delete", "-f", str(NAMES_POLICY))
    return failures


def walkthrough(cluster: Cluster, backend: str = "nftables", say: Say = print, keep: bool = False) -> bool:
    started = time.monotonic()
    # The expectations assume no NetworkPolicy in `default` but the walkthrough's own.
    left = cluster.kubectl("get", "networkpolicies", "-n", "default", "-o", "name").stdout.split()
    if left:
        raise ClusterError(f"the walkthrough needs `default` without NetworkPolicies; found {', '.join(left)}")
    install_chart(cluster, backend, say)
    say("kubectl apply -f realcluster/manifests/walkthrough.yaml (frontend, backend, unallowed; 2 pods each)")
    cluster.kubectl("apply", "-f", str(WORKLOADS))
    for app in ("backend", "frontend", "unallowed"):
        rollout(cluster, f"deployment/{app}", "default", say)
    dns_ip = deploy_dns(cluster, say)
    failures = check_phase(cluster, "no policy", lambda p: True, say)
    say("kubectl apply -f examples/policies/allow-frontend-to-backend.yaml")
    cluster.kubectl("apply", "-f", str(POLICY))
    failures += check_phase(cluster, "allow-frontend-to-backend",
                            lambda p: p.source_app == "frontend" and p.protocol == "TCP", say)
    say("kubectl delete -f examples/policies/allow-frontend-to-backend.yaml")
    cluster.kubectl("delete", "-f", str(POLICY))
    failures += check_phase(cluster, "policy deleted", lambda p: True, say)
    failures += names_phase(cluster, dns_ip, say)
    if not keep:
        cluster.kubectl("delete", "-f", str(WORKLOADS), "--wait=true", timeout=120)
        remove_dns(cluster)
        uninstall_chart(cluster, backend, say)
    for f in failures:
        say(f"  {f}")
    say(f"walkthrough ({cluster.layout.cni} CNI, {backend}): {'PASSED' if not failures else 'FAILED'} "
        f"in {time.monotonic() - started:.0f} s")
    return not failures
