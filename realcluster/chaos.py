"""Chaos on the real cluster: faults made one at a time while a prober in a client pod opens
a fresh TCP connection to an allowed and to a denied server every 20 ms.

The client runs on node-1, both servers (busybox httpd on port 80) on node-2, whose agent
enforces their ingress: `allowed` admits the client, `denied` admits nobody. The prober runs
in this process, in the client pod's network namespace (entered by the pod's process), so
that nothing the faults touch (the API server, kubelet, the agent) stands between it and
the packets. For each fault: how many denied probes connected (must be none, except while
policyd's own kernel objects are gone: then the time until the agent repaired them), and the
longest run of failed allowed probes.
"""

from __future__ import annotations

import ctypes
import json
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from policyd.ipt.layout import Names
from policyd.lab.netns import http_get
from policyd.model.objects import Direction
from policyd.nft.layout import LAYOUT as NFT_LAYOUT

from .cluster import Cluster, ClusterError, rollout
from .images import POLICYD, TESTBOX
from .paths import HELM
from .walkthrough import CHART, RELEASE, RELEASE_NS

Say = Callable[[str], None]
NS = "chaos"
EVERY = 0.02  # a probe to each server every 20 ms
TIMEOUT = 0.5  # a connection not established by then failed (under the SYN retransmit at 1 s)
SETTLE = 3.0  # seconds probed after a fault has been repaired, in its window
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


@dataclass
class Probe:
    at: float  # monotonic time the connection was started
    target: str  # "allowed" | "denied"
    connected: bool


@dataclass
class Prober:
    """Connections from inside a network namespace (the client pod's), every EVERY seconds
    to each target, each judged connected or not within TIMEOUT."""

    netns_path: str
    targets: dict[str, tuple[str, int]]
    probes: list[Probe] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    error: list[BaseException] = field(default_factory=list)

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def finish(self) -> None:
        self.stop.set()
        self.thread.join()
        if self.error:
            raise self.error[0]

    def _run(self) -> None:
        try:
            fd = os.open(self.netns_path, os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:  # this thread only; it ends with the prober
                    raise OSError(ctypes.get_errno(), f"setns {self.netns_path}")
            finally:
                os.close(fd)
            self._loop()
        except BaseException as e:  # noqa: BLE001 - reported by finish()
            self.error.append(e)

    def _loop(self) -> None:
        sel = selectors.DefaultSelector()
        pending: dict[socket.socket, Probe] = {}
        next_at = time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= next_at:
                next_at += EVERY
                for name, addr in self.targets.items():
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    s.setblocking(False)
                    s.connect_ex(addr)
                    p = Probe(now, name, False)
                    pending[s] = p
                    sel.register(s, selectors.EVENT_WRITE)
            for key, _ in sel.select(timeout=max(0.0, min(next_at - time.monotonic(), 0.005))):
                done = key.fileobj
                assert isinstance(done, socket.socket)
                pending[done].connected = done.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
                self._done(sel, pending, done)
            for s, p in list(pending.items()):
                if time.monotonic() - p.at > TIMEOUT:
                    self._done(sel, pending, s)

    def _done(self, sel: selectors.BaseSelector, pending: dict[socket.socket, Probe], s: socket.socket) -> None:
        sel.unregister(s)
        s.close()
        self.probes.append(pending.pop(s))


@dataclass(frozen=True)
class FaultResult:
    fault: str
    seconds: float  # the fault's window: made, repaired, then SETTLE seconds probed
    denied: int
    denied_connected: int
    allowed: int
    allowed_failed: int
    longest_outage: float  # seconds: the longest run of failed allowed probes
    opens_node: bool  # the fault removes policyd's own kernel objects: open until repaired
    open_for: float  # first to last denied probe that connected (0 when none did)
    error: str = ""  # the fault could not be made or was not repaired in time (with the agent's log)
    agent_log: str = ""  # node-2's agent's last lines, kept when the node opened (when it found and repaired what)

    @property
    def held(self) -> bool:
        return self.denied_connected == 0 and not self.error


def window(probes: list[Probe], start: float, end: float, fault: str, opens_node: bool, error: str = "") -> FaultResult:
    inside = [p for p in probes if start <= p.at < end]
    denied = [p for p in inside if p.target == "denied"]
    allowed = sorted((p for p in inside if p.target == "allowed"), key=lambda p: p.at)
    run = longest = 0
    for p in allowed:
        run = 0 if p.connected else run + 1
        longest = max(longest, run)
    through = [p.at for p in denied if p.connected]
    return FaultResult(fault, end - start, len(denied), len(through), len(allowed), sum(not p.connected for p in allowed),
                       longest * EVERY, opens_node, (max(through) - min(through) + EVERY) if through else 0.0, error)


def manifests() -> str:
    """The chaos namespace: the client, the two servers, their policies (a List)."""
    pod = ('{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "{name}", "namespace": "' + NS + '", "labels": {{"app": "{name}"}}}}, '
           '"spec": {{"nodeName": "{node}", "terminationGracePeriodSeconds": 0, "containers": [{{"name": "c", "image": "' + TESTBOX
           + '", "imagePullPolicy": "Never", "command": {cmd}}}]}}}}')
    httpd = json.dumps(["httpd", "-f", "-p", "80", "-h", "/www"])
    sleep = json.dumps(["sleep", "2147483647"])
    docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
            json.loads(pod.format(name="client", node="node-1", cmd=sleep)),
            json.loads(pod.format(name="allowed", node="node-2", cmd=httpd)),
            json.loads(pod.format(name="denied", node="node-2", cmd=httpd)),
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "allowed", "namespace": NS},
             "spec": {"podSelector": {"matchLabels": {"app": "allowed"}}, "policyTypes": ["Ingress"],
                      "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}]}},
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "denied", "namespace": NS},
             "spec": {"podSelector": {"matchLabels": {"app": "denied"}}, "policyTypes": ["Ingress"]}}]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})


def pod_pid(uid: str, command: str = "") -> int:
    """A process of the pod (kubelet names the pod's cgroup after its uid) whose command line
    holds `command` (any, sandbox included, when empty)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cgroup = (entry / "cgroup").read_text()
                if (f"pod{uid}" in cgroup or f"pod{uid.replace('-', '_')}" in cgroup) and command.encode() in (entry / "cmdline").read_bytes():
                    return int(entry.name)
            except OSError:
                continue
    raise ClusterError(f"no process {command!r} of pod {uid}")


class Chaos:
    def __init__(self, cluster: Cluster, backend: str, say: Say, etcd_down: float = 60.0) -> None:
        self.cluster, self.backend, self.say, self.etcd_down = cluster, backend, say, etcd_down
        self.node2 = next(n for n in cluster.layout.nodes if n.name == "node-2")

    # --- the pieces ------------------------------------------------------------------------

    def kubectl(self, *args: str, check: bool = True) -> str:
        return self.cluster.kubectl(*args, check=check).stdout

    def pod(self, ns: str, name: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", "pod", "-n", ns, name, "-o", "json"))  # type: ignore[no-any-return]

    def agent_pod(self) -> dict[str, Any]:
        pods = json.loads(self.kubectl("get", "pods", "-n", RELEASE_NS, "-l", "app.kubernetes.io/name=policyd", "-o", "json"))["items"]
        return next(p for p in pods if p["spec"].get("nodeName") == "node-2" and not p["metadata"].get("deletionTimestamp"))

    def wait(self, what: str, ready: Callable[[], bool], timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            try:
                if ready():
                    return
            except (ClusterError, StopIteration, KeyError, json.JSONDecodeError) as e:
                last = f" (last look: {type(e).__name__}: {e})"
            if time.monotonic() > deadline:
                raise ClusterError(f"chaos: {what} not within {timeout:.0f} s{last}")
            time.sleep(0.5)

    def api_ready(self) -> bool:
        return self.cluster.kubectl("get", "--raw", "/readyz", check=False, timeout=10).returncode == 0

    def agent_ready(self) -> bool:
        p = self.agent_pod()
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in p["status"].get("conditions", []))

    def agent_log(self, lines: int = 40) -> str:
        try:
            name = self.agent_pod()["metadata"]["name"]
        except (ClusterError, StopIteration, KeyError) as e:
            return f"(no agent pod on node-2: {e})"
        return self.cluster.kubectl("logs", "-n", RELEASE_NS, name, f"--tail={lines}", check=False).stdout

    def in_node(self, *argv: str) -> None:
        proc = self.cluster.run_in_fabric(["nsenter", f"--net=/run/netns/{self.node2.netns}", "--", *argv], check=False)
        if proc.returncode != 0:
            raise ClusterError(f"{' '.join(argv)} on node-2: {proc.stderr.strip()}")

    def drift_repairs(self) -> float:
        """policyd_drift_repairs_total of node-2's agent (its metrics port on the host network)."""
        code, out = http_get(self.cluster.layout.fabric, f"http://{self.node2.ip}:9808/metrics", timeout=2.0)
        if code != 200:
            raise ClusterError(f"node-2's /metrics: {code} {out[:200]}")
        return sum(float(line.rsplit(" ", 1)[1]) for line in out.splitlines() if line.startswith("policyd_drift_repairs_total{"))

    # --- the faults ------------------------------------------------------------------------

    def kill_agent_during_churn(self) -> None:
        restarts = self.agent_pod()["status"]["containerStatuses"][0]["restartCount"]
        stop = threading.Event()

        def churn() -> None:
            i = 0
            while not stop.is_set():
                name = f"churn-{i % 4}"
                self.kubectl("delete", "pod", "-n", NS, name, "--wait=false", "--ignore-not-found", check=False)
                doc = json.loads(manifests())["items"][2]  # an httpd pod like `allowed`
                doc["metadata"] = {"name": f"churn-{(i + 2) % 4}", "namespace": NS, "labels": {"app": "allowed"}}
                self.cluster.kubectl("create", "-f", "-", input=json.dumps(doc), check=False)
                i += 1
                stop.wait(0.3)

        t = threading.Thread(target=churn)
        t.start()
        try:
            time.sleep(2.0)
            pid = pod_pid(self.agent_pod()["metadata"]["uid"], "policyd")
            os.kill(pid, 9)
            self.wait("the agent restarted", lambda: self.agent_pod()["status"]["containerStatuses"][0]["restartCount"] > restarts)
            self.wait("the agent ready again", self.agent_ready)
            time.sleep(2.0)
        finally:
            stop.set()
            t.join()
        self.kubectl("delete", "pod", "-n", NS, "-l", "app=allowed", "--field-selector", "metadata.name!=allowed", "--wait=false",
                     check=False)

    def helm_upgrade(self) -> None:
        repo, tag = POLICYD.rsplit(":", 1)
        new = f"{tag}-chaos"
        for node in self.cluster.layout.nodes:
            proc = self.cluster.ctr(node, "images", "tag", "--force", POLICYD, f"{repo}:{new}")
            if proc.returncode != 0:
                raise ClusterError(f"ctr images tag on {node.name}: {proc.stderr.strip()}")
        self.cluster.run_in_fabric([str(HELM), "upgrade", RELEASE, str(CHART), "-n", RELEASE_NS, "--reuse-values",
                                    "--set", f"image.tag={new}"])
        rollout(self.cluster, f"daemonset/{RELEASE}", RELEASE_NS, lambda s: None, timeout=180)

    def restart_apiserver(self) -> None:
        self.cluster.restart(self.cluster.layout.control_plane, "kube-apiserver")
        self.wait("kube-apiserver ready", self.api_ready)

    def stop_etcd(self) -> None:
        self.cluster.restart(self.cluster.layout.control_plane, "etcd", down_for=self.etcd_down)
        self.wait("kube-apiserver ready after etcd", self.api_ready)

    def restart_kubelet(self) -> None:
        self.cluster.restart(self.node2, "kubelet")
        self.wait("node-2 Ready", lambda: "True" in self.kubectl(
            "get", "node", "node-2", "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}"))

    def delete_ruleset(self) -> None:
        """What policyd owns in node-2's kernel, removed: the nftables table; for iptables
        every POLICYD chain of IPv4 (the family probed) and the jumps to them."""
        before = self.drift_repairs()
        if self.backend == "nftables":
            self.in_node("nft", "delete", "table", "inet", "policyd")
        else:
            # One atomic table replacement (what restoring a saved configuration does), not a
            # sequence of commands the agent could repair half-way through.
            self.in_node("sh", "-c", "iptables-legacy-save -t filter | grep -v POLICYD | iptables-legacy-restore -T filter")
        self.wait("the agent's drift repair", lambda: self.drift_repairs() > before, timeout=30)

    def flush_denied_chain(self) -> None:
        """The denied server's ingress chain emptied (nftables: flushed; iptables: flushed in
        IPv4): the pod falls through to accept until repaired."""
        before = self.drift_repairs()
        key = f"{NS}/denied"
        if self.backend == "nftables":
            self.in_node("nft", "flush", "chain", "inet", "policyd", NFT_LAYOUT.pod_chain(key, Direction.INGRESS))
        else:
            self.in_node("iptables-legacy", "-F", Names("policyd").pod_chain(key, Direction.INGRESS))
        self.wait("the agent's drift repair", lambda: self.drift_repairs() > before, timeout=30)

    # --- the run ---------------------------------------------------------------------------

    def run(self) -> list[FaultResult]:
        faults: list[tuple[str, Callable[[], None], bool]] = [
            ("the agent killed (kill -9) during pod churn", self.kill_agent_during_churn, False),
            ("helm upgrade to a new image tag (the DaemonSet rolls)", self.helm_upgrade, False),
            ("kube-apiserver restarted", self.restart_apiserver, False),
            (f"etcd stopped for {self.etcd_down:.0f} s", self.stop_etcd, False),
            ("node-2's kubelet restarted", self.restart_kubelet, False),
            ("policyd's ruleset deleted on node-2", self.delete_ruleset, True),
            ("the denied pod's chain flushed on node-2", self.flush_denied_chain, True),
        ]
        self.cluster.kubectl("apply", "-f", "-", input=manifests())
        self.wait("the chaos pods running", lambda: all(self.pod(NS, n)["status"].get("phase") == "Running"
                                                        and self.pod(NS, n)["status"].get("podIP") for n in ("client", "allowed", "denied")))
        targets = {t: (self.pod(NS, t)["status"]["podIP"], 80) for t in ("allowed", "denied")}
        prober = Prober(f"/proc/{pod_pid(self.pod(NS, 'client')['metadata']['uid'])}/ns/net", targets)
        prober.start()
        results = []
        try:
            # Enforced before any fault: the allowed server answers, the denied one never.
            start = time.monotonic()
            self.wait("the policies enforced", lambda: self._steady(prober, time.monotonic() - 1.0), timeout=60)
            self.say(f"chaos ({self.backend}): policies enforced after {time.monotonic() - start:.1f} s; faults one at a time")
            for name, fault, opens in faults:
                start = time.monotonic()
                error = ""
                try:
                    fault()
                except ClusterError as e:  # recorded with the agent's words; the next faults still run
                    error = f"{e}\nnode-2's agent:\n{self.agent_log()}"
                    self.say(f"chaos ({self.backend}): {name}: {error}")
                time.sleep(SETTLE)
                r = window(prober.probes, start, time.monotonic(), name, opens, error)
                if r.denied_connected:
                    r = replace(r, agent_log=self.agent_log())
                results.append(r)
                self.say(f"chaos ({self.backend}): {name}: {r.denied_connected} of {r.denied} denied probes connected"
                         f"{f' within {r.open_for * 1e3:.0f} ms' if r.denied_connected else ''}; longest allowed outage "
                         f"{r.longest_outage * 1e3:.0f} ms ({r.allowed_failed} of {r.allowed} failed) in {r.seconds:.0f} s")
                self.wait("the policies enforced again", lambda: self._steady(prober, time.monotonic() - 1.0), timeout=60)
        finally:
            prober.finish()
            self.kubectl("delete", "namespace", NS, "--wait=true", "--timeout=120s", check=False)
        return results

    @staticmethod
    def _steady(prober: Prober, since: float) -> bool:
        recent = [p for p in list(prober.probes) if p.at >= since]
        allowed = [p for p in recent if p.target == "allowed"]
        denied = [p for p in recent if p.target == "denied"]
        return len(allowed) >= 20 and all(p.connected for p in allowed) and len(denied) >= 20 and not any(p.connected for p in denied)


def table(results: dict[str, list[FaultResult]]) -> list[str]:
    rows = ["| backend | fault | denied probes that connected | allowed probes failed | longest allowed outage | window |",
            "|---|---|---|---|---|---|"]
    for backend, rs in results.items():
        for r in rs:
            through = f"{r.denied_connected} of {r.denied}" + (f" (open {r.open_for * 1e3:.0f} ms, until the repair)" if r.denied_connected else " (held)")
            if r.error:
                through = f"{r.denied_connected} of {r.denied} (**not repaired in time**)"
            rows.append(f"| {backend} | {r.fault} | {through} | {r.allowed_failed} of {r.allowed} | {r.longest_outage * 1e3:.0f} ms | {r.seconds:.0f} s |")
    return rows


CONFIGS = {"bridge": "nftables", "ptp": "iptables"}  # the test command's two clusters


def on_cluster(cluster: Cluster, say: Say, etcd_down: float = 60.0) -> list[FaultResult]:
    """The chart with this CNI style's backend, the faults, the chart removed again."""
    from .walkthrough import install_chart, uninstall_chart

    backend = CONFIGS[cluster.layout.cni]
    install_chart(cluster, backend, say)
    try:
        return Chaos(cluster, backend, say, etcd_down).run()
    finally:
        uninstall_chart(cluster, backend, say)


def document(results: dict[str, list[FaultResult]], seconds: float, command: str) -> str:
    """docs/reliability.md."""
    return "\n".join([
        "# Reliability: faults on a real cluster",
        "",
        f"Produced by `{command}` on {time.strftime('%Y-%m-%d')} in {seconds / 60:.1f} min (the README's test command runs the",
        "same faults: tests/cluster/test_chaos.py).",
        "",
        "Two real two-node clusters side by side (realcluster/: Kubernetes built from its module, containerd, kube-proxy),",
        "bridge CNI with the nftables backend and ptp CNI with the iptables backend, policyd installed by its chart. A client",
        "pod on node-1; two busybox httpd pods on node-2, `allowed` (a policy admits the client) and `denied` (a policy",
        "admits nobody). A prober in the client pod's network namespace (entered from the host, so that nothing the faults",
        f"touch stands between it and the packets) opens a fresh TCP connection to each server every {EVERY * 1e3:.0f} ms; a",
        f"connection not established within {TIMEOUT * 1e3:.0f} ms failed. Faults are made one at a time; each window runs",
        f"from the fault until it is repaired (the component back, the agent Ready) and {SETTLE:.0f} s more.",
        "",
        "* **Held**: no denied probe connected while the fault lasted. Every fault outside policyd's own kernel objects",
        "  must hold: the ruleset stays in the kernel while the agent, the API server, etcd or kubelet are gone, and a",
        "  restarted or upgraded agent adopts it without opening or closing anything.",
        "* Removing policyd's own kernel objects (root on the node deleting its table or chains) opens the pods they",
        "  protected until the agent's one-second drift check has repaired them: the table gives that time.",
        "* Allowed probes that failed: a connection not established within the timeout. Both clusters share 2 CPUs and",
        "  make each fault at the same moment; the agent's restart with pod churn then loads the machine fully, which is",
        "  when the few failures appear (the same kill, and the same churn, on one cluster alone failed none).",
        "",
        *table(results),
        "",
    ])
