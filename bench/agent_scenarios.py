"""Benchmarks of the running agent (`policyd run`) on a BenchCluster: policy create →
enforced as seen by packets, pod churn, cold start, and no loss while the ruleset changes.
Each returns plain numbers; bench/run.py turns them into docs/benchmarks.md."""

from __future__ import annotations

import json
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field

from cluster import APPS, NODE, POD, POLICY, PROBE_PORT0, REMOTE_BASE, SERVER_IP, BenchCluster, delta, latency, pod_doc, policy_doc, probe_policy

EVENTS = "policyd_event_to_programmed_seconds_count"
PARTIAL_SYNCS = 'policyd_sync_duration_seconds_count{kind="partial"}'
FULL_SYNCS = 'policyd_sync_duration_seconds_count{kind="full"}'


def netns_cmd(c: BenchCluster, pod: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", c.handles[pod].netns, *args]


# --- 1. policy create → enforced ---------------------------------------------------------

@dataclass
class CreateResult:
    observed: list[float]  # API event → first probe that sees the port open, seconds
    agent_p50: float
    agent_p99: float


def policy_create(c: BenchCluster, exe: str, count: int, rate: float, probe_ms: int = 10) -> CreateResult:
    """Create `count` policies at `rate`/s, each opening one more client → server port; a
    prober in the client pod tries the next port every `probe_ms` ms (a fresh SYN each time:
    an answer, accept or RST, means the new rule is in)."""
    before = c.metrics()
    prober = subprocess.Popen(netns_cmd(c, "client", exe, "probe", SERVER_IP, str(PROBE_PORT0), str(count), str(probe_ms)),
                              stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)  # the first port must be seen closed before its policy exists
        created = []
        t0 = time.monotonic()
        for k in range(count):
            created.append(c.store(POLICY, "bench", probe_policy(k)))
            time.sleep(max(0.0, t0 + (k + 1) / rate - time.monotonic()))
        out, _ = prober.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        prober.kill()
        out, _ = prober.communicate()
        raise RuntimeError(f"only {len(out.splitlines())} of {count} new policies were observed enforced within 30 s") from None
    seen = {int(k): float(t) for k, t in (line.split() for line in out.splitlines())}
    observed = [seen[k] - created[k] for k in range(count)]
    if min(observed) < 0:
        raise RuntimeError("a probe port answered before its policy was created: the server is not isolated")
    time.sleep(0.5)
    after = c.metrics()
    p50, p99 = latency(before, after)
    for k in range(count):
        c.store(POLICY, "bench", probe_policy(k), "DELETED")
    wait_committed(c, after, count)  # the next run must not queue behind these deletions
    return CreateResult(observed, p50, p99)


# --- 2. pod churn ------------------------------------------------------------------------

@dataclass
class ChurnResult:
    rate: float
    events: int
    achieved_rate: float
    p50: float
    p99: float
    p99_first_half: float
    p99_second_half: float
    syncs: float
    drain: float  # last event → every event committed, seconds


class Churner:
    """Adds pods and deletes the oldest, keeping about `live` of them: one in ten is a
    local pod (a host interface slot, so it gets its own chains), the rest are remote."""

    def __init__(self, c: BenchCluster, live: int = 100, start: int = 0) -> None:
        self.c, self.live, self.i = c, live, start
        self.pods: deque[tuple[str, dict]] = deque()

    def step(self) -> None:
        if len(self.pods) >= self.live and self.i % 2:
            ns, doc = self.pods.popleft()
            self.c.store(POD, ns, doc, "DELETED")
        else:
            i = self.i
            ns = f"ns{i % self.c.n_ns}"
            local = i % 10 == 0
            addr = self.c.slot_ip((i // 10) % self.c.slots) if local else str(REMOTE_BASE + 500_000 + i)
            doc = pod_doc(ns, f"churn{i}", {"app": APPS[i % len(APPS)], "tier": "web"}, NODE if local else "node-7", addr)
            self.c.store(POD, ns, doc)
            self.pods.append((ns, doc))
        self.i += 1

    def clear(self) -> None:
        while self.pods:
            ns, doc = self.pods.popleft()
            self.c.store(POD, ns, doc, "DELETED")


def wait_committed(c: BenchCluster, before: dict, events: int, timeout: float = 60.0) -> float:
    """Seconds until the agent has committed `events` events since `before`."""
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        if delta(before, c.metrics(), EVENTS) >= events:
            return time.monotonic() - t
        time.sleep(0.02)
    got = delta(before, c.metrics(), EVENTS)
    raise RuntimeError(f"the agent committed {got:.0f} of {events} events within {timeout} s: {c.log_tail()}")


def pod_churn(c: BenchCluster, rate: float, seconds: float) -> ChurnResult:
    churn = Churner(c, start=int(rate * 1000))
    n = int(rate * seconds)
    before = c.metrics()
    t0 = time.monotonic()
    mid = None
    for j in range(n):
        churn.step()
        if j == n // 2:
            wait_committed(c, before, j + 1, timeout=5)  # mid-run snapshot (does not stall the rate much)
            mid = c.metrics()
        time.sleep(max(0.0, t0 + (j + 1) / rate - time.monotonic()))
    achieved = n / (time.monotonic() - t0)
    drain = wait_committed(c, before, n)
    after = c.metrics()
    p50, p99 = latency(before, after)
    assert mid is not None
    churn.clear()
    wait_committed(c, before, n + len(churn.pods))
    return ChurnResult(rate, n, achieved, p50, p99, latency(before, mid)[1], latency(mid, after)[1],
                       delta(before, after, PARTIAL_SYNCS), drain)


# --- 3. cold start -----------------------------------------------------------------------

@dataclass
class StartResult:
    ready: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # the agent's CPU seconds until ready
    rss: list[float] = field(default_factory=list)
    peak: list[float] = field(default_factory=list)
    ops: float = 0
    elements: float = 0
    sets: float = 0


def cold_start(c: BenchCluster, repeats: int) -> StartResult:
    """Process start → /readyz (initial lists in, first full sync committed) on an empty
    kernel table, and the agent's memory once ready."""
    r = StartResult()
    for _ in range(repeats):
        r.ready.append(c.start_agent())
        r.cpu.append(c.cpu_seconds())
        rss, peak = c.rss_mb()
        r.rss.append(rss)
        r.peak.append(peak)
        m = c.metrics()
        r.ops, r.elements, r.sets = m["policyd_transaction_operations_total"], m["policyd_set_elements"], m["policyd_sets"]
        c.stop_agent()
    return r


# --- 8. no loss under churn ----------------------------------------------------------------

@dataclass
class LossResult:
    connections: int
    failed: int
    udp_sent: int
    udp_lost: int
    udp_socket_full: int  # of the lost: dropped by the receiving socket's full buffer
    policy_events: int
    pod_events: int
    partial_syncs: float
    full_syncs: float


def no_loss(c: BenchCluster, exe: str, seconds: float) -> LossResult:
    """Connections (one at a time, each a new conntrack entry) and a UDP stream between the
    allowed client and server, while policies selecting the server are created and deleted
    (its chains rewritten) at 10/s, pods churn at 50/s, and the agent runs a full resync
    every second (started with --resync 1)."""
    rcvbuf_before = udp_rcvbuf_errors(c)
    servers = [subprocess.Popen(netns_cmd(c, "server", exe, "server", "80")),
               subprocess.Popen(netns_cmd(c, "server", "iperf3", "-s", "-1"), stdout=subprocess.DEVNULL)]
    try:
        time.sleep(0.3)
        before = c.metrics()
        conn = subprocess.Popen(netns_cmd(c, "client", exe, "client", SERVER_IP, "80", str(seconds)), stdout=subprocess.PIPE, text=True)
        udp = subprocess.Popen(netns_cmd(c, "client", "iperf3", "-c", SERVER_IP, "-u", "-b", "20M", "-l", "1000", "-t", str(seconds), "-J"),
                               stdout=subprocess.PIPE, text=True)
        churn = Churner(c, start=900_000)
        t0 = time.monotonic()
        j = policies = 0
        while time.monotonic() - t0 < seconds:
            churn.step()
            if j % 5 == 0:
                k = j // 5
                doc = policy_doc("bench", f"churn-{k // 2}", {"app": "server"},
                                 [{"from": [{"podSelector": {"matchLabels": {"app": APPS[k % len(APPS)]}}}], "ports": [{"port": 30000 + k}]}])
                c.store(POLICY, "bench", doc, "ADDED" if k % 2 == 0 else "DELETED")
                policies += 1
            j += 1
            time.sleep(max(0.0, t0 + j / 50 - time.monotonic()))
        out, _ = conn.communicate(timeout=seconds + 30)
        report, _ = udp.communicate(timeout=seconds + 30)
        after = c.metrics()
        churn.clear()
    finally:
        for p in servers:
            p.kill()
            p.wait()
    n, _rate, _p50, _p99, failed = out.split()
    s = json.loads(report)["end"]["sum"]
    return LossResult(int(n), int(failed), int(s["packets"]), int(s["lost_packets"]), udp_rcvbuf_errors(c) - rcvbuf_before,
                      policies, j, delta(before, after, PARTIAL_SYNCS), delta(before, after, FULL_SYNCS))


def udp_rcvbuf_errors(c: BenchCluster) -> int:
    """Datagrams the server pod's kernel dropped because the receiving socket was full (the
    receiver was not scheduled in time): lost, but not by any firewall."""
    lines = [line.split() for line in subprocess.run(netns_cmd(c, "server", "cat", "/proc/net/snmp"), capture_output=True,
                                                      text=True, check=True).stdout.splitlines() if line.startswith("Udp:")]
    return int(dict(zip(lines[0][1:], lines[1][1:], strict=True))["RcvbufErrors"])
