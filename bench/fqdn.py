"""Egress to domain names (ClusterNetworkPolicy `domainNames`, docs/fqdn.md): what holding
DNS answers on the agent's queue costs.

One routed node (nftables, interface dispatch) with the agent in process: its learner thread
on NFQUEUE, as `policyd run` starts it. A CoreDNS pod serves 10,000 names `n<i>.bench.test`
(A records in 198.18.0.0/16, TTL 300 s); an external namespace answers TCP 80 on every
address of that range (a local route). A client pod is the subject of a ClusterNetworkPolicy:
Accept DNS to the CoreDNS pod, Accept `*.bench.test`, Deny 0.0.0.0/0.

* Held: queries paced at 1,000/s for a few seconds; for each answer, the time from the
  learner taking it off the queue to its verdict (the addresses written first), and the
  client's query round trip with the policy (answers held) and without it (the limit).
* CPU: this process's CPU time over that run (the learner thread; the client runs apart),
  per 1,000 answers.
* Pairs: 10,000 resolve-then-connect pairs, each connection the first after its lookup;
  any refused or timed-out connection is a failure (target 0).
* First packet to a learned address: the first-packet bench's pair (bench/firstpacket.py,
  1,000 synthetic pods), the client allowed to the server only through a learned address,
  against no firewall and against the same pair allowed by NetworkPolicy.
"""

from __future__ import annotations

import gc
import ipaddress
import resource
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import firstpacket
from report import spread, table

from harness.node_agent import NodeAgent
from policyd.dataplane.config import DispatchMode, Fqdn, RenderConfig
from policyd.lab import dns as labdns
from policyd.lab.netns import entered, ip
from policyd.lab.topology import Topology
from policyd.model.manifests import Manifests, load_documents
from policyd.names.learner import Learner, Limits, QueueReader
from policyd.names.queue import NfQueue
from policyd.names.scope import PlanScope

QUEUE = 5300
N_NAMES = 10_000
RATE = 1_000  # answers per second in the paced run
CNP = """
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: client-by-name}
spec:
  tier: Admin
  priority: 10
  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: client}}}}
  egress:
  - action: Accept
    to: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {k8s-app: kube-dns}}}}]
    protocols: [{udp: {destinationPort: {number: 53}}}]
  - action: Accept
    to: [{domainNames: ["*.bench.test"]}]
  - action: Deny
    to: [{networks: ["0.0.0.0/0"]}]
"""
PODS = """
apiVersion: v1
kind: Pod
metadata: {name: dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec: {nodeName: node-0, containers: [{name: c}]}
status: {podIPs: [{ip: 10.64.0.53}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: bench, labels: {app: client}}
spec: {nodeName: node-0, containers: [{name: c}]}
status: {podIPs: [{ip: 10.64.0.10}]}
"""
# The client, run in its pod's namespace: `paced SERVER SECONDS` or `pairs SERVER N`.
CLIENT = r"""
import select, socket, struct, sys, time, dns.message, dns.rdatatype
mode, server, arg, names = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
def query(i):
    m = dns.message.make_query(f"n{i % names}.bench.test", "A"); m.id = i % 65536; return m.to_wire()
if mode == "paced":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect((server, 53)); s.setblocking(False)
    sent, rtts, start, i = {}, [], time.perf_counter(), 0
    end = start + arg
    wires = [query(k) for k in range(int(arg * RATE))]  # made before, so that the pacing is all the loop does
    while True:  # send on time, and sleep in select() until the next send or an answer (no spinning)
        now = time.perf_counter()
        if now < end and now >= start + i / RATE:
            sent[i % 65536] = now; s.send(wires[i]); i += 1
            continue
        if now > end + 1 or (now >= end and not sent): break
        wait = max(0.0, start + i / RATE - now) if now < end else 0.05
        if select.select([s], [], [], wait)[0]:
            wire = s.recv(4096)
            t = time.perf_counter(); qid = struct.unpack("!H", wire[:2])[0]
            if qid in sent: rtts.append(t - sent.pop(qid))
    print(len(rtts), i, *rtts)
else:
    failed = slow = 0; t0 = time.perf_counter()
    for i in range(int(arg)):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2); s.connect((server, 53))
        s.send(query(i)); ans = dns.message.from_wire(s.recv(4096)); s.close()
        addr = next(r.address for rr in ans.answer for r in rr if rr.rdtype == dns.rdatatype.A)
        c = socket.socket(); c.settimeout(1)
        try: c.connect((addr, 80))
        except OSError: failed += 1
        c.close()
    print(failed, int(arg), time.perf_counter() - t0)
""".replace("RATE", str(RATE))


def zone() -> str:
    lines = ["$TTL 300", "$ORIGIN bench.test."]
    lines += [f"n{i} IN A 198.18.{i // 250}.{i % 250 + 1}" for i in range(N_NAMES)]
    return "\n".join(lines) + "\n"


def cpu() -> tuple[float, float]:
    """User and system CPU seconds of this process (system: the kernel's work done in the
    learner's system calls, the answer's forwarding after its verdict included)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=1000)[int(q * 1000) - 1] if len(xs) > 1 else xs[0]


class Bench:
    """The node, the DNS pod, the client, the external range and the agent with its learner."""

    def __init__(self, state: Path) -> None:
        self.prefix = f"pdq{uuid.uuid4().hex[:6]}"
        self.topo = Topology(self.prefix, "routed", state_dir=f"/run/policyd/{self.prefix}")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.reader: QueueReader | None = None
        m = Manifests()
        load_documents("bench", PODS, m)
        m = m.with_implicit_namespaces()
        self.node = self.topo.add_node("node-0", ipaddress.ip_network("10.64.0.0/24"))
        handles = {p.name: self.topo.add_pod(p, [], []) for p in m.pods}
        self.topo.wait_ready(handles=list(handles.values()))
        self.client_ns = handles["client"].netns
        self.dns_ip = "10.64.0.53"
        zfile = state / "zone.db"
        zfile.write_text(zone())
        self.procs.append(labdns.start(handles["dns"].netns, state / "dns", labdns.read_zone(str(zfile))))
        labdns.wait_serving(handles["dns"].netns, [self.dns_ip], self.procs[-1], timeout=60)
        ext_ns, ext = self.topo.add_external(["198.18.0.1"], [80], [])
        self.procs.append(ext)
        ip("route", "add", "local", "198.18.0.0/16", "dev", "lo", ns=ext_ns)  # every address of the range is the host's
        ip("route", "add", "198.18.0.0/16", "via", _gw4(), ns=self.topo.fabric)
        self.agent = NodeAgent(self.node.netns, "node-0", DispatchMode.INTERFACE, cfg=RenderConfig(mode=DispatchMode.INTERFACE, fqdn=Fqdn(QUEUE)))
        self.agent.load(m.namespaces, m.pods, [])
        self.agent.sync()
        self.cnps = [c for c in _parse(CNP).cluster_policies]

    def policy(self, on: bool) -> None:
        for c in self.cnps:
            if on:
                self.agent.compiler.upsert_cluster_policy(c)
            else:
                self.agent.compiler.delete_cluster_policy(c.name)
        self.agent.sync()

    def start_learner(self) -> list[float]:
        """The learner as the agent runs it; returns the list its hold times are appended to."""
        held: list[float] = []
        gc.collect()
        gc.freeze()  # as the agent does once its initial lists are in (kube/operator.freeze_heap)
        with entered(self.node.netns):
            scope = PlanScope(self.agent.compiler, self.agent.backend.renderer(self.agent.syncer.cfg).layout)
            learner = Learner(scope, self.agent.backend.names_writer(), True, Limits(min_ttl=300, per_pod=100_000))
            learner.stats.held = held.append  # type: ignore[method-assign]  # every sample, not the histogram
            self.reader = QueueReader(learner, lambda: NfQueue(QUEUE, True))
            self.reader.start()
        return held

    def client(self, *args: str) -> list[str]:
        out = subprocess.run(["ip", "netns", "exec", self.client_ns, sys.executable, "-c", CLIENT, *args],
                             capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(f"the bench client failed: {out.stderr[-2000:]}")
        return out.stdout.split()

    def close(self) -> None:
        if self.reader is not None:
            self.reader.stop()
        for p in self.procs:
            p.kill()
            p.wait()
        self.topo.teardown()


def _gw4() -> str:
    from policyd.lab.topology import FABRIC_NET

    return str(FABRIC_NET.broadcast_address - 2)


def _parse(text: str) -> Manifests:
    m = Manifests()
    load_documents("bench", text, m)
    assert not m.problems, m.problems
    return m


def paced(b: Bench, seconds: float, names: int) -> tuple[list[float], int, int]:
    out = b.client("paced", b.dns_ip, str(seconds), str(names))
    got, sent = int(out[0]), int(out[1])
    return [float(x) for x in out[2:]], got, sent


def measure(args) -> list[str]:
    seconds = 2.0 if args.quick else 5.0
    pairs = 2_000 if args.quick else N_NAMES
    with tempfile.TemporaryDirectory(prefix="pdqb-") as tmp:
        b = Bench(Path(tmp))
        try:
            distinct = int(RATE * seconds)  # every answer a name not asked before
            limit, got0, sent0 = paced(b, seconds, distinct)  # no policy: answers are not queued
            b.policy(True)
            held = b.start_learner()
            u0, s0 = cpu()
            rtts, got1, sent1 = paced(b, seconds, distinct)
            u1, s1 = cpu()
            assert b.reader is not None
            learned = b.reader.learner.stats.learned
            held_again: list[float] = []
            b.reader.learner.stats.held = held_again.append  # type: ignore[method-assign]
            paced(b, seconds, 100)  # 100 names asked again and again
            failed, n, pair_s = b.client("pairs", b.dns_ip, str(pairs), str(N_NAMES))
            status = b.reader.status()
        finally:
            b.close()
    first = first_packet(args)
    us = lambda xs, q: f"{pct(xs, q) * 1e6:.0f} µs"  # noqa: E731
    rows = [
        ["an answer held by the agent (off the queue → read → addresses written → verdict), each a new name, p50", us(held, 0.5), "≤ 200 µs"],
        ["the same, p99", us(held, 0.99), "≤ 1 ms"],
        ["the same with 100 names asked again and again (answers read once, then remembered), p50 / p99",
         f"{us(held_again, 0.5)} / {us(held_again, 0.99)}", "≤ 200 µs / ≤ 1 ms"],
        ["the client's query round trip, p50: no domainNames rule (not queued) / held", f"{us(limit, 0.5)} / {us(rtts, 0.5)}", "—"],
        ["the same, p99", f"{us(limit, 0.99)} / {us(rtts, 0.99)}", "—"],
        [f"answers at {RATE:,}/s for {seconds:.0f} s, each a new name: answered / sent; learned from", f"{got1:,} / {sent1:,}; {learned:,}", "all"],
        ["the agent's CPU per 1,000 answers (this process, the learner thread): user + system (the kernel's part: the "
         "element writes, the verdicts and the answers' forwarding they trigger)",
         f"{(u1 - u0) / max(got1, 1) * 1e6:.0f} ms + {(s1 - s0) / max(got1, 1) * 1e6:.0f} ms", "—"],
        ["resolve-then-connect pairs, first connection after each lookup refused or timed out",
         f"{int(failed)} of {int(n):,} ({float(pair_s):.1f} s)", "0"],
        ["learner failures", str(status["failures"]), "0"],
    ]
    return [
        f"One routed node (nftables), CoreDNS serving {N_NAMES:,} names, a ClusterNetworkPolicy allowing `*.bench.test` to "
        "the client pod (bench/fqdn.py). Samples: every answer of the paced run.",
        "",
        *table(["figure", "measured", "target"], rows),
        "",
        "First packet of new connections to a learned address (bench/firstpacket.py's pair in a 1,000-pod cluster; "
        f"{first['seconds']:.1f} s of connections per run, {first['repeats']} runs per variant, interleaved):",
        "",
        *table(["variant", "p50 µs", "p99 µs", "Δp50 vs limit", "connections/s vs limit"], first["rows"]),
    ]


def first_packet(args) -> dict[str, object]:
    seconds, repeats = (1.5, 2) if args.quick else (3.0, 5)
    variants = ["no firewall", "NetworkPolicy (the pair's own)", "learned address (domainNames)"]
    got: dict[str, list[tuple[float, float, float]]] = {v: [] for v in variants}
    cnp = _parse("""
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: client-by-name}
spec:
  tier: Admin
  priority: 10
  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: client}}}}
  egress:
  - {action: Accept, to: [{domainNames: ["server.bench.test"]}]}
  - {action: Deny, to: [{networks: ["0.0.0.0/0"]}]}
""").cluster_policies
    with firstpacket.pair("q") as it:
        for _ in range(repeats):
            for v in variants:
                if v == "no firewall":
                    it.clear()
                    subprocess.run(["ip", "netns", "exec", it.node.netns, "conntrack", "-F"], capture_output=True)
                elif v.startswith("NetworkPolicy"):
                    it.agent(1_000)
                else:
                    agent = it.agent(1_000, cfg=RenderConfig(mode=DispatchMode.INTERFACE, fqdn=Fqdn(QUEUE)), cnps=cnp)
                    with entered(it.node.netns):
                        scope = PlanScope(agent.compiler, agent.backend.renderer(agent.syncer.cfg).layout)
                        _, targets = scope.targets(it.client_ip)
                        assert targets, "the client's domainNames peer"
                        agent.backend.names_writer().add({targets[0].sets[4]: [(it.server_ip, 3600.0)]})
                got[v].append(firstpacket.run_client(it.exe, it.client_ns, it.server_ip, seconds))
    lim = statistics.median(r[0] for r in got["no firewall"])
    lim_rate = statistics.median(r[2] for r in got["no firewall"])
    rows = [[v, spread([r[0] for r in rs]), spread([r[1] for r in rs]), f"{statistics.median(r[0] for r in rs) - lim:+.1f} µs",
             f"{statistics.median(r[2] for r in rs) / lim_rate:.0%}"] for v, rs in got.items()]
    return {"seconds": seconds, "repeats": repeats, "rows": rows}

