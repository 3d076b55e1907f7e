"""The agent core both agents share: compiler → syncer → runner, the lock that guards the
compiler, and the status they report. The cluster agent (`kube.operator`: kopf watches in,
/readyz and Prometheus out) and the lab's node agent (`lab.agentproc`: a manifest directory
in, a JSON status file out) differ only in where events come from and where status goes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..compile.engine import Compiler
from ..dataplane.backend import AnyBackend
from ..dataplane.config import RenderConfig
from ..model.events import Delete, Event
from ..model.objects import PodKey
from ..names.learner import Learner, Limits, QueueReader
from ..names.queue import NfQueue
from ..names.scope import PlanScope
from ..observe.counters import CounterIndex, Counters, RuleTotals
from ..observe.droplog import CompiledSource, DropLogger
from ..observe.flows import DEFAULT_LIMIT, FlowTable
from .interfaces import RouteInterfaces
from .revoke import CommitSuspects, ConnectionCutter
from .runner import SyncRunner
from .syncer import Syncer, SyncResult

log = logging.getLogger("policyd.agent")
SWEEP_GAP = 0.2  # seconds between two sweeps for revoked connections: a burst of syncs is one more sweep


class AgentCore:
    def __init__(self, node: str, backend: AnyBackend, cfg: RenderConfig, resync_every: float = 300.0,
                 min_interval: float = 0.0, interfaces: RouteInterfaces | None = None) -> None:
        self.compiler = Compiler(node)
        self.syncer = Syncer(self.compiler, backend, cfg, interfaces or RouteInterfaces())
        self.runner = SyncRunner(self.syncer, min_interval=min_interval, resync_every=resync_every)
        # Held by whoever changes the compiler, and by the sync while it takes the changes:
        # the kernel work of a sync may run on another thread than the event source.
        self.lock = self.syncer.lock
        self.drift_repairs: dict[str, int] = {}
        self.rule_totals = RuleTotals()
        self._totals_lock = threading.Lock()
        self.learner: QueueReader | None = None
        # End the connections a change revoked (reconcile/revoke.py) when the base chains drop
        # marked connections (cfg.revoke_mark); made at the first sweep, on the syncing
        # thread, in the node's namespace.
        self.revoke = cfg.revoke_mark is not None
        self.cutter: ConnectionCutter | None = None
        self.sweep_wanted = threading.Event()
        self.commit_suspects: CommitSuspects | None = None
        self.sweep_lock = threading.Lock()
        self.sweep_only: set[str] | None = set()  # the addresses the next sweep judges (None: all)

    def apply(self, events: Iterable[Event]) -> bool:
        """Feed events to the compiler; True (and a sync requested) when there were any. An
        event that fails inside the compiler (a bug) is logged; the compiler is then dirty
        and the sync rebuilds it from its store."""
        n = 0
        with self.lock:
            for ev in events:
                try:
                    self.compiler.apply(ev)
                except Exception:  # noqa: BLE001 - the next sync heals it (Syncer._heal_compiler)
                    log.exception("the compiler failed on %s; it is rebuilt from its store at the next sync", ev)
                n += 1
                if isinstance(ev, Delete) and ev.kind == "Pod":
                    self.pod_gone(ev.key)
        if n:
            self.runner.request()
        return n > 0

    def names_learner(self, limits: Limits) -> QueueReader:
        """The learner of domainNames peers' addresses (names/), reading this agent's NFQUEUE;
        start it in the node's namespace. Pods that go are forgotten (`pod_gone`)."""
        fqdn = self.syncer.cfg.fqdn
        if fqdn is None:
            raise ValueError("domainNames learning is off (RenderConfig.fqdn)")
        backend = self.syncer.backend
        scope = PlanScope(self.compiler, backend.renderer(self.syncer.cfg).layout, self.lock)
        learner = Learner(scope, backend.names_writer(), fqdn.fail_open, limits)
        self.learner = QueueReader(learner, lambda: NfQueue(fqdn.queue, fqdn.fail_open))
        return self.learner

    def pod_gone(self, key: str) -> None:
        """A pod was deleted: what only its DNS answers taught goes with it."""
        if self.learner is not None:
            self.learner.forget_pod(key)

    def drop_logger(self, fmt: str, emit: Callable[[str], None] | None = None) -> DropLogger:
        """A drop logger for this agent's configured group (start it in the node's namespace);
        lines go to stdout unless `emit` says otherwise."""
        drop_log = self.syncer.cfg.drop_log
        if drop_log is None:
            raise ValueError("no drop log is configured")
        return DropLogger(drop_log.group, self.compiler.node or "", CompiledSource(self.compiler, self.lock, lambda: self.syncer.desired.pods),
                          emit or _print_line, fmt)

    def flow_table(self, limit: int = DEFAULT_LIMIT) -> FlowTable:
        """A flow table resolving addresses to this agent's pods (the store's address index,
        turned on here) and keeping the connections of the node's own pods."""
        with self.lock:
            self.compiler.store.index_addresses()

        def pod_at(address: str) -> str | None:
            with self.lock:
                return self.compiler.store.pod_at(address)

        def is_local(key: str) -> bool:
            with self.lock:
                pod = self.compiler.store.pods.get(PodKey(key))
                return pod is not None and pod.node == self.compiler.node

        return FlowTable(pod_at, is_local, limit)

    def rule_counters(self) -> Counters:
        """The kernel's per-rule counters, summed by policy rule, as totals that never go
        down (observe/counters.py: RuleTotals), for /metrics."""
        with self.lock:
            index = CounterIndex(c for objs in self.syncer.desired.pods.values() for c in objs.chains)
        with self._totals_lock:  # two scrapes at once: one reads after the other
            return self.rule_totals.update(index, self.syncer.backend.rule_counters())

    def run_once(self) -> SyncResult | None:
        """A sync if one is due (SyncRunner.run_once), counting the drift it repaired."""
        result = self.runner.run_once()
        for d in result.drift if result is not None else ():
            self.drift_repairs[d.kind] = self.drift_repairs.get(d.kind, 0) + 1
        if result is not None and result.ops and self.revoke:
            self.sweep_soon(self._suspects())
        return result

    def _suspects(self) -> set[str] | None:
        if self.commit_suspects is None:
            self.commit_suspects = CommitSuspects(self.syncer)
        return self.commit_suspects()

    def sweep_soon(self, only: set[str] | None) -> None:
        """After a sync that changed the kernel: end the connections it revoked (of the
        addresses `only`; None: all), on a thread of its own (started here, so in the node's
        namespace), off the sync's path. Sweeps asked for while one runs are one more sweep
        (of all they asked for), at most every SWEEP_GAP seconds."""
        mark = self.syncer.cfg.revoke_mark
        if mark is None:
            return
        if self.cutter is None:
            try:
                self.cutter = ConnectionCutter(self.compiler, self.lock, mark)
            except OSError as e:
                log.warning("revoked connections cannot be ended here (conntrack netlink: %s); new ones are enforced as ever", e)
                self.revoke = False
                return
            threading.Thread(target=self._sweeps, args=(self.cutter,), name="policyd-revoke", daemon=True).start()
        with self.sweep_lock:
            if only is None or self.sweep_only is None:
                self.sweep_only = None
            else:
                self.sweep_only |= only
            self.sweep_wanted.set()

    def _sweeps(self, cutter: ConnectionCutter) -> None:
        while True:
            self.sweep_wanted.wait()
            with self.sweep_lock:
                only, self.sweep_only = self.sweep_only, set()
                self.sweep_wanted.clear()
            if only is None or only:
                cutter.sweep(only)
            time.sleep(SWEEP_GAP)

    @property
    def in_step(self) -> bool:
        """Everything asked for is in the kernel: no failure, nothing requested or pending."""
        return self.runner.stats.consecutive_failures == 0 and not self.runner.requested and not self.syncer.pending

    def status(self) -> dict[str, Any]:
        """What both agents report about their enforcement."""
        s = self.runner.stats
        with self.lock:
            local_pods, pending = len(self.compiler.plans), sorted(self.syncer.pending)
        return {
            "healthy": s.consecutive_failures == 0 and s.syncs > 0 and not s.drift_seen,
            "syncs": s.syncs, "full_syncs": s.full_syncs, "failures": s.failures,
            "consecutive_failures": s.consecutive_failures, "last_error": s.last_error,
            "drift": s.drift_seen, "drift_repairs": dict(self.drift_repairs),
            "last_sync": s.last_sync_wall,
            "last_sync_ms": round(s.last_result.seconds * 1e3, 2) if s.last_result else None,
            "last_ops": s.last_result.ops if s.last_result else None,
            "local_pods": local_pods, "pending_interfaces": pending, "kernel_leftovers": self.syncer.backend.leftovers,
            "divergences": self.syncer.divergences, "compiler_rebuilds": self.syncer.compiler_rebuilds,
            "compiler_divergences": self.syncer.compiler_divergences, "full_failures": s.full_failures,
            "connections_cut": sum(self.cutter.cut.values()) if self.cutter is not None else 0,
        }


def _print_line(line: str) -> None:
    print(line, flush=True)
