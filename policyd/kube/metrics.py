"""Prometheus metrics of the cluster agent (its own registry: no process-global state)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from ..dataplane.drift import DRIFT_KINDS
from ..names.learner import HOLD_BUCKETS, QueueReader
from ..observe.counters import Counters
from ..observe.droplog import DropCounters
from ..observe.flows import FlowTable
from .feed import WATCHED_KINDS

# Fine below 100 ms, where the targets are (event → commit p99 ≤ 10 ms and ≤ 30 ms), so
# that histogram_quantile() answers with a useful resolution.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
                   0.1, 0.2, 0.3, 0.5, 1, 2, 5, 10)


class AgentMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, ...: the dashboard's cost panels
        self.event_to_programmed = Histogram(
            "policyd_event_to_programmed_seconds", "From a watch event's arrival to the commit of the transaction that enforces it",
            registry=r, buckets=LATENCY_BUCKETS)
        self.sync_duration = Histogram(
            "policyd_sync_duration_seconds", "Duration of one sync (compile, diff, commit)", ["kind"],
            registry=r, buckets=LATENCY_BUCKETS)
        self.operations = Counter("policyd_transaction_operations", "nftables operations committed", registry=r)
        self.apply_errors = Counter("policyd_apply_errors", "Syncs that failed (the next one is a full resync)", registry=r)
        self.sync_failures = Counter("policyd_sync_failures", "Syncs that failed, by what they were: a partial sync (changes "
                                     "since the last one) or a full one (the kernel listed, or desired state rebuilt)",
                                     ["kind"], registry=r)
        for kind in ("full", "partial"):
            self.sync_failures.labels(kind)
        self.compile_failures = Counter("policyd_compile_failures", "Watch events that failed inside the compiler (a bug): the "
                                        "next sync rebuilds its plans and sets from its store", registry=r)
        self.compiler_rebuilds = Counter("policyd_compiler_rebuilds", "Syncs that rebuilt the compiler from its store after an "
                                         "event failed in it", registry=r)
        self.compiler_divergences = Counter("policyd_compiler_divergences", "Periodic audits whose compile from scratch differed "
                                            "from the incremental compiler (a bug; the compile from scratch is enforced)", registry=r)
        self.relist_failures = Counter("policyd_relist_failures", "Scheduled relists that failed (each is retried with backoff)",
                                       ["kind"], registry=r)
        self.events = Counter("policyd_watch_events", "Watch events received", ["kind"], registry=r)
        self.drift_repairs = Counter("policyd_drift_repairs", "Kernel objects found changed behind policyd's back and rewritten",
                                     ["kind"], registry=r)
        # Every label value from zero, so that a first repair is an increase() and not a
        # series appearing at 1 (which rate(), increase() and the alerts would not see).
        for kind in DRIFT_KINDS:
            self.drift_repairs.labels(kind)
        for kind in WATCHED_KINDS:
            self.events.labels(kind)
            self.relist_failures.labels(kind)
        for kind in ("full", "partial"):
            self.sync_duration.labels(kind)
        self.relist_deletes = Counter("policyd_relist_deletes", "Objects found deleted by a relist after a lost watch", registry=r)
        self.local_pods = Gauge("policyd_local_pods", "Pods on this node known to the agent", registry=r)
        self.local_pods_enforced = Gauge("policyd_local_pods_enforced", "Local pods isolated by at least one policy", registry=r)
        self.pending_interfaces = Gauge("policyd_pending_interfaces", "Local pods whose host interface is not found yet", registry=r)
        self.policies = Gauge("policyd_policies", "NetworkPolicies in the cluster", registry=r)
        self.invalid_policies = Gauge("policyd_invalid_policies", "NetworkPolicies that failed validation (enforced as deny)", registry=r)
        self.sets = Gauge("policyd_sets", "Peer sets in use on this node", registry=r)
        self.set_elements = Gauge("policyd_set_elements", "Entries in those peer sets", registry=r)
        self.rejected_objects = Counter("policyd_rejected_objects", "Watched objects that did not parse (the last good version is kept)",
                                        registry=r)
        self.stale_deletes = Counter("policyd_stale_deletes", "DELETED events of an earlier incarnation of a re-created object, "
                                     "handled after the new one's ADDED and ignored", registry=r)
        self.leftovers = Counter("policyd_kernel_leftovers", "Objects the kernel refused to remove (iptables: ipsets in use); "
                                 "the next full resync retries them", registry=r)
        self.divergences = Counter("policyd_desired_divergences", "Full resyncs whose desired state, rebuilt from the "
                                   "compiler, differed from the incrementally kept one (a bug; the rebuilt state is enforced)",
                                   registry=r)
        self.connections_cut = CutMetrics()
        r.register(self.connections_cut)
        self.ready = Gauge("policyd_ready", "1 once the initial lists are in and the first sync succeeded", registry=r)
        self.rules = RuleCounters()
        r.register(self.rules)
        self.drop_log = DropLogMetrics()
        r.register(self.drop_log)
        self.flows = FlowMetrics()
        r.register(self.flows)
        self.names = NamesMetrics()
        r.register(self.names)


class FlowMetrics:
    """The flow records' own accounting (--flows): how many are kept, how many a full table
    did not record."""

    def __init__(self) -> None:
        self.table: FlowTable | None = None

    def attach(self, table: FlowTable) -> None:
        self.table = table

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        t = self.table
        if t is None:
            return
        yield GaugeMetricFamily("policyd_flow_records", "Flow records held (source, destination, protocol, port)",
                                value=len(t.records))
        yield CounterMetricFamily("policyd_flow_records_not_recorded", "New connections not recorded: the table was full",
                                  value=t.dropped)


class CutMetrics:
    """Open connections ended because a change revoked them (reconcile/revoke.py), read from
    the agent's cutter at each scrape: its sweeps run on a thread of their own."""

    def __init__(self) -> None:
        self.cut: Callable[[], dict[tuple[str, str], int]] = dict

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("policyd_connections_cut", "Open connections ended because a change revoked them (their "
                                     "conntrack entries marked and dropped), by the local side that refuses them now and the "
                                     "tier that decided", labels=["direction", "tier"])
        for (direction, tier), n in sorted(self.cut().items()):
            family.add_metric([direction, tier], n)
        yield family


class DropLogMetrics:
    """The drop log's own accounting (--drop-log): records written, and what a flood made it
    lose instead of growing."""

    def __init__(self) -> None:
        self.counters: DropCounters | None = None

    def attach(self, counters: DropCounters) -> None:
        self.counters = counters

    def collect(self) -> Iterator[CounterMetricFamily]:
        c = self.counters
        if c is None:
            return
        yield CounterMetricFamily("policyd_drop_log_records", "Drop log lines written (drops, audit, sampled accepts)", value=c.logged)
        yield CounterMetricFamily("policyd_drop_log_unattributed", "Lines whose log prefix no plan of this agent wrote",
                                  value=c.unattributed)
        lost = CounterMetricFamily("policyd_drop_log_lost", "Logged packets not written: the queue was full (the writer fell "
                                   "behind), or the kernel found the socket buffer full (counted per overrun)", labels=["reason"])
        lost.add_metric(["queue_full"], c.queue_full)
        lost.add_metric(["socket_overrun"], c.socket_overruns)
        yield lost
        restarts = CounterMetricFamily("policyd_drop_log_restarts", "Times a drop log thread failed (logged) and was started "
                                       "again", labels=["thread"])
        for thread in ("read", "write"):
            restarts.add_metric([thread], c.restarts.get(thread, 0))
        yield restarts


class NamesMetrics:
    """The learning of domainNames peers' addresses from DNS answers (--fqdn): answers held,
    what became of them and why, addresses held, the time an answer is held."""

    REASONS_PASSED = ("not a local pod's address", "no domainNames rule of the pod lists the name", "no address in the answer",
                      "the pod holds its limit of learned addresses")
    REASONS_FAILED = ("unreadable packet", "unreadable answer", "addresses not written", "TCP stream not followed",
                      "TCP message not complete in time")

    def __init__(self) -> None:
        self.reader: QueueReader | None = None

    def attach(self, reader: QueueReader) -> None:
        self.reader = reader

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        if self.reader is None:
            return
        learner = self.reader.learner
        s = learner.stats
        answers = CounterMetricFamily("policyd_dns_answers", "DNS answers to local pods a domainNames rule selects, held on the queue, "
                                      "by what became of them: learned (addresses written, then passed), passed (nothing to learn, or "
                                      "failed open) or dropped (failed closed), and why", labels=["outcome", "reason"])
        answers.add_metric(["learned", ""], s.learned)
        for reason in (*self.REASONS_PASSED, *self.REASONS_FAILED):
            answers.add_metric(["passed", reason], s.passed.get(reason, 0))
        for reason in self.REASONS_FAILED:
            answers.add_metric(["dropped", reason], s.dropped.get(reason, 0))
        yield answers
        yield CounterMetricFamily("policyd_dns_learned_addresses", "Addresses written (or refreshed) in domainNames peers' sets",
                                  value=s.entries_written)
        yield GaugeMetricFamily("policyd_dns_held_addresses", "Learned addresses this agent's answers hold now (per pod, until "
                                "their TTL)", value=learner.held_entries)
        yield CounterMetricFamily("policyd_dns_over_limit", "Addresses not learned because their pod held its limit "
                                  "(--fqdn-max-per-pod)", value=s.over_limit)
        yield CounterMetricFamily("policyd_dns_learner_failures", "Times the learner's thread failed on a packet (logged)",
                                  value=self.reader.failures)
        hold = HistogramMetricFamily("policyd_dns_hold_seconds", "From an answer's arrival off the queue to its verdict "
                                     "(learning included)")
        cumulative, buckets = 0, []
        for bound, n in zip([*HOLD_BUCKETS, float("inf")], s.held_seconds, strict=True):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        hold.add_metric([], buckets, s.held_sum)
        yield hold


class RuleCounters:
    """The kernel's per-rule counters (--rule-counters), by policy rule, as totals that never
    go down (RuleTotals: a rewritten chain's counts start again at zero in the kernel); no
    pod or address label, so the series are bounded by the policies' rules. What no policy
    rule wrote is exported apart (policyd_rule_unattributed_*)."""

    LABELS = ["kind", "namespace", "policy", "direction", "rule"]

    def __init__(self) -> None:
        self.last: Counters | None = None

    def update(self, counters: Counters) -> None:
        self.last = counters

    def collect(self) -> Iterator[CounterMetricFamily]:
        if self.last is None:
            return
        packets = CounterMetricFamily("policyd_rule_packets", "Packets that reached this policy rule's verdict, summed over "
                                      "the node's pods (kind: allow, drop: a pod's isolation, tier: a ClusterNetworkPolicy rule, "
                                      "audit)", labels=self.LABELS)
        nbytes = CounterMetricFamily("policyd_rule_bytes", "Bytes of those packets", labels=self.LABELS)
        for key, count in sorted(self.last.by_rule.items()):
            labels = [key.kind, key.namespace, key.policy, key.direction, key.rule]
            packets.add_metric(labels, count.packets)
            nbytes.add_metric(labels, count.bytes)
        yield packets
        yield nbytes
        yield CounterMetricFamily("policyd_rule_unattributed_packets", "Packets counted by rules of ours that no policy rule "
                                  "wrote (base chains, the default return of pods no policy isolates)", value=self.last.other.packets)
        yield CounterMetricFamily("policyd_rule_unattributed_bytes", "Bytes of those packets", value=self.last.other.bytes)
