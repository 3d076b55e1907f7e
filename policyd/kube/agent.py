"""The cluster agent's shared state: what the watch handlers feed (ClusterFeed → the
compiler), the initial lists and the scheduled relists, and the sync loop that commits.
It lives on kopf's event loop, except a sync's kernel work, which runs on a worker thread
(see kube/operator.py for how the pieces are assembled)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..backends import make_backend
from ..compile.engine import Compiler
from ..dataplane.backend import AnyBackend
from ..dataplane.config import DispatchMode, RenderConfig
from ..model.events import Delete
from ..model.objects import NetworkPolicy
from ..reconcile.core import AgentCore
from ..reconcile.syncer import SyncResult
from .api import credentials
from .events import EventPoster
from .feed import WATCHED_KINDS, ClusterFeed, Finding, NotServed, WatchKind, ref_of
from .lean_kopf import kopf
from .memory import freeze_heap
from .metrics import AgentMetrics
from .settings import AgentSettings, FailMode
from .watch import LeanWatch

log = logging.getLogger("policyd.agent")

MAX_POSTED = 10_000  # findings remembered as posted (each a few hundred bytes)
RELIST_BACKOFF = (1.0, 60.0)  # a failed scheduled relist is retried after 1 s, 2 s, 4 s … at most a minute
Lister = Callable[[WatchKind], AsyncIterator[tuple[list[dict[str, Any]], int | None]]]  # pages and the list's resourceVersion


class ClusterAgent:
    """Everything the handlers and the sync loop share. It lives on kopf's event loop, except
    a sync's kernel work (AgentCore.run_once on a worker thread); the compiler is shared
    with that thread under `lock`."""

    def __init__(self, settings: AgentSettings, mode: DispatchMode, backend: AnyBackend | None = None,
                 lister: Lister | None = None) -> None:
        self.settings = settings
        closed = settings.interface_prefixes if settings.fail_mode is FailMode.CLOSED else ()
        cfg = RenderConfig(table=settings.table, mode=mode, closed_prefixes=closed, drop_log=settings.drop_log,
                           counters=settings.rule_counters, fqdn=settings.fqdn, revoke_mark=settings.revoke_mark)
        self.core = AgentCore(settings.node_name, backend or make_backend(settings.backend, settings.table), cfg,
                              resync_every=settings.resync_every, min_interval=settings.min_interval)
        if backend is not None:  # a test's fake: no kernel, no conntrack to sweep
            self.core.revoke = False
        self.compiler, self.syncer, self.runner = self.core.compiler, self.core.syncer, self.core.runner
        self.feed = ClusterFeed(self.compiler)
        self.metrics = AgentMetrics()
        self.metrics.connections_cut.cut = lambda: dict(self.core.cutter.cut) if self.core.cutter is not None else {}
        self.lister = lister
        self.wake = asyncio.Event()
        self.arrivals: list[float] = []  # monotonic arrival times of events not yet committed
        # (policy, resourceVersion, reason) of findings already posted, oldest first and
        # bounded: a restarted agent relies on the Events it can list anyway (EventPoster).
        self.posted: OrderedDict[tuple[str, int | None, str], None] = OrderedDict()
        self.counted: dict[str, int] = {}
        self.events = EventPoster(settings.node_name, settings.kubeconfig)
        self.relist_at: dict[WatchKind, float] = {}
        self.relist_failures: dict[WatchKind, int] = {}  # scheduled relists that failed in a row
        self.unserved: set[WatchKind] = set()  # kinds the API server does not serve (no CRD)
        self.lean: dict[WatchKind, LeanWatch] = {}  # kinds watched by a LeanWatch, not kopf (set by serve())
        self.list_rv: dict[WatchKind, int | None] = {}  # each initial list's resourceVersion
        self.next_relist = time.monotonic() + settings.relist_every
        self.heartbeat = time.monotonic()
        self.froze_after_relist = False
        self.relisting: asyncio.Task[None] | None = None  # the relist running beside the sync loop
        self.last_watch_event: dict[WatchKind, float] = {}
        self.last_relist_ok: float | None = None
        self.lock = self.core.lock  # around every change to the compiler (see the module's docstring)

    # --- from the handlers ----------------------------------------------------------------

    def observe(self, kind: WatchKind, typ: str | None, raw: dict[str, Any]) -> list[Finding]:
        feed = self.feed
        if typ is None and feed.ready:
            # kopf lists at start (overlapping our own lists) and again after it lost a
            # watch (410 Gone). Either way an object deleted meanwhile sends no event; the
            # kind that lost it may have an empty list (no event at all), so check every
            # kind kopf watches for deletions (a LeanWatch relists its own after a 410).
            self.schedule_relist(self.settings.relist_grace, lean=False)
        self.metrics.events.labels(kind).inc()
        self.last_watch_event[kind] = time.monotonic()
        with self.lock:
            event = feed.observe(kind, typ, raw)
        changed = event is not None
        if isinstance(event, Delete) and event.kind == "Pod":
            self.core.pod_gone(event.key)
        if changed:
            self.arrivals.append(time.monotonic())
            self.runner.request()
            self.wake.set()
        if kind == "NetworkPolicy" and typ != "DELETED":
            policy = self.compiler.store.policies.get(ref_of(kind, raw)[1])  # type: ignore[call-overload]
            if policy is not None:
                return self._new_findings(policy, raw)
        return []

    async def initial_lists(self, max_delay: float = 10.0) -> None:
        """List every kind (retrying until the API answers), feed the items, open the gate."""
        assert self.lister is not None
        listed: list[tuple[str, str]] = []
        for kind in WATCHED_KINDS:
            delay = 0.5
            while True:
                refs: list[tuple[str, str]] = []
                try:
                    async for items, rv in self.lister(kind):  # page by page: never a whole list in memory
                        self.list_rv[kind] = rv
                        with self.lock:
                            for item in items:
                                self.feed.observe(kind, None, item)  # a retry re-observes: skipped by version
                                refs.append(ref_of(kind, item))
                    break
                except NotServed as e:
                    self.unserved.add(kind)
                    log.warning("%s is not served by the API server (%s): not watched, so none is enforced; "
                                "install its CRD (the chart does) and restart the agent", kind, e)
                    break
                except Exception as e:  # noqa: BLE001 - the API may not be reachable yet
                    log.warning("initial list of %s failed (%s); retrying in %.1f s", kind, e, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, max_delay)
            listed += refs
            log.info("listed %d %s objects", len(refs), kind)
        with self.lock:
            self.feed.open_gate(listed)
        self.arrivals.append(time.monotonic())
        self.runner.request()
        self.wake.set()

    def lean_watch(self, kind: WatchKind) -> LeanWatch:
        """kind's watch stream of our own (kopf no longer watches it)."""

        async def read_credentials() -> kopf.ConnectionInfo:
            return await asyncio.to_thread(credentials, self.settings.kubeconfig)

        def on_event(typ: str, raw: dict[str, Any]) -> None:
            self.observe(kind, typ, raw)  # Pods raise no findings

        async def relist() -> int | None:
            return await self.relist(kind)

        watch = self.lean[kind] = LeanWatch(kind, read_credentials, on_event, relist, server_timeout=self.settings.watch_timeout)
        return watch

    async def relist(self, kind: WatchKind) -> int | None:
        """List `kind` again and fold it in: what changed is applied (newer versions win),
        what the list lacks is deleted. The list's resourceVersion (a LeanWatch after 410
        Gone resumes there)."""
        assert self.lister is not None
        present: set[tuple[str, str]] = set()
        rv: int | None = None
        changed = 0
        async for items, page_rv in self.lister(kind):
            rv = rv if rv is not None else page_rv
            with self.lock:
                for item in items:
                    changed += self.feed.observe(kind, None, item) is not None
                    present.add(ref_of(kind, item))
        with self.lock:
            deleted = self.feed.relisted(kind, present, rv)
        self.last_relist_ok = time.monotonic()
        self.metrics.relist_deletes.inc(len(deleted))
        if changed or deleted:
            self.arrivals.append(time.monotonic())
            self.runner.request()
            self.wake.set()
        log.info("relisted %d %s objects: %d changed, %d deleted", len(present), kind, changed, len(deleted))
        return rv

    def _new_findings(self, policy: NetworkPolicy, raw: dict[str, Any]) -> list[Finding]:
        rv = (raw.get("metadata") or {}).get("resourceVersion")
        out = []
        for f in self.feed.findings(policy):
            mark = (f.policy, rv, f.reason)
            if mark not in self.posted:
                self.posted[mark] = None
                if len(self.posted) > MAX_POSTED:
                    self.posted.popitem(last=False)
                out.append(f)
        return out

    # --- the sync loop --------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        s = self.runner.stats
        # Not ready while the kernel lacks what we wrote (drift seen, repair not yet done).
        return self.feed.ready and s.syncs > 0 and s.consecutive_failures == 0 and not s.drift_seen

    def schedule_relist(self, delay: float, lean: bool = True) -> None:
        """Relist every kind (`lean`: those of our own watches too) `delay` s from now. Each
        call moves the time: a listing of thousands of objects arrives as a burst of
        events, and one relist after the burst is enough."""
        at = time.monotonic() + delay
        for k in WATCHED_KINDS:
            if k not in self.unserved and (lean or k not in self.lean):
                self.relist_at[k] = at

    async def relist_due(self) -> None:
        had_work = bool(self.relist_at)
        await self._relist_due()
        if had_work and not self.relist_at and not self.froze_after_relist:
            # The first relist follows kopf's own first listing: kopf's copies are in now.
            self.froze_after_relist = True
            freeze_heap("after kopf's first listing")

    async def _relist_due(self) -> None:
        now = time.monotonic()
        if now >= self.next_relist:
            self.next_relist = now + self.settings.relist_every
            self.schedule_relist(0)
        for kind, at in list(self.relist_at.items()):
            if now < at or self.lister is None:
                continue
            del self.relist_at[kind]
            present: set[tuple[str, str]] = set()
            rv = None
            try:
                async for items, page_rv in self.lister(kind):
                    present.update(ref_of(kind, b) for b in items)
                    rv = rv if rv is not None else page_rv
            except Exception as e:  # noqa: BLE001 - retried with backoff
                failed = self.relist_failures[kind] = self.relist_failures.get(kind, 0) + 1
                delay = min(RELIST_BACKOFF[1], RELIST_BACKOFF[0] * 2 ** (failed - 1))
                self.relist_at.setdefault(kind, time.monotonic() + delay)
                self.metrics.relist_failures.labels(kind).inc()
                log.warning("relist of %s failed (%d in a row), retrying in %.0f s: %s", kind, failed, delay, e)
                continue
            self.relist_failures.pop(kind, None)
            self.last_relist_ok = time.monotonic()
            with self.lock:
                events = self.feed.relisted(kind, present, rv)
            if events:
                self.metrics.relist_deletes.inc(len(events))
                self.arrivals.append(time.monotonic())
                self.runner.request()

    def sync_once(self) -> None:
        """One sync on this thread (tests; the agent uses sync_in_worker)."""
        if self.feed.ready:
            failures, batch = self.runner.stats.failures, self._take_arrivals()
            self._record(failures, batch, self.core.run_once())

    async def sync_in_worker(self) -> None:
        """One sync with its kernel work (read, diff, apply) on a worker thread: the event
        loop keeps serving the watches and the health endpoints during a long commit."""
        # Not due, or only the drift check with the kernel's generation unmoved (the common
        # idle ticks): no hop to the worker thread at all (the hop costs 0.1 ms of CPU, the
        # generation request 7 µs).
        now = time.monotonic()
        if self.feed.ready and self.runner.due(now) and not self.runner.idle_check(now):
            failures, batch = self.runner.stats.failures, self._take_arrivals()
            self._record(failures, batch, await asyncio.to_thread(self.core.run_once))
            if self.arrivals:
                # Events that arrived while the worker ran may have had their request
                # cleared by it (the runner resets `requested` as a sync starts): their
                # changes are committed by that sync or the next, but only a sync counts
                # their arrival, so ask for one (a no-op when that sync took them in).
                self.runner.request()
                self.wake.set()

    def _take_arrivals(self) -> list[float]:
        batch, self.arrivals = self.arrivals, []
        return batch

    def _record(self, failures: int, batch: list[float], result: SyncResult | None) -> None:
        """Metrics and logs of one sync attempt; events it did not commit wait for the next."""
        stats = self.runner.stats
        m = self.metrics
        if stats.failures != failures:
            m.apply_errors.inc()
            m.sync_failures.labels("full" if self.syncer.last_attempt_full else "partial").inc()
            self.arrivals = batch + self.arrivals
            return
        if result is None:
            self.arrivals = batch + self.arrivals
            return
        done = time.monotonic()
        for t in batch:
            m.event_to_programmed.observe(done - t)
        m.sync_duration.labels("full" if result.full else "partial").observe(result.seconds)
        m.operations.inc(result.ops)
        for d in result.drift:
            m.drift_repairs.labels(d.kind).inc()
        if result.ops:
            oldest = (done - min(batch)) * 1e3 if batch else 0.0
            log.info("%s sync: %d operations in %.1f ms for %d events (oldest waited %.1f ms)",
                     "full" if result.full else "partial", result.ops, result.seconds * 1e3, len(batch), oldest)
        c = self.compiler
        with self.lock:
            self._gauges(c, m)

    def _gauges(self, c: Compiler, m: AgentMetrics) -> None:
        for name, counter, total in (("rejected", m.rejected_objects, self.feed.stats.rejected),
                                     ("stale_deletes", m.stale_deletes, self.feed.stats.stale_deletes),
                                     ("leftovers", m.leftovers, self.syncer.backend.leftovers),
                                     ("divergences", m.divergences, self.syncer.divergences),
                                     ("compile_failures", m.compile_failures, self.feed.stats.compile_failures),
                                     ("compiler_rebuilds", m.compiler_rebuilds, self.syncer.compiler_rebuilds),
                                     ("compiler_divergences", m.compiler_divergences, self.syncer.compiler_divergences)):
            if total > self.counted.get(name, 0):  # counts kept elsewhere: export what is new since the last look
                counter.inc(total - self.counted.get(name, 0))
                self.counted[name] = total
        m.local_pods.set(len(c.plans))
        m.local_pods_enforced.set(sum(1 for p in c.plans.values() if p.ingress or p.egress))
        m.pending_interfaces.set(len(self.syncer.pending))
        m.policies.set(len(c.store.policies))
        m.invalid_policies.set(len(self.feed.invalid))
        m.sets.set(len(c.sets))
        m.set_elements.set(sum(len(s.counts) for s in c.sets.values()))
        m.ready.set(int(self.ready))

    def start_relists(self) -> None:
        """A due relist runs as a task of its own beside the sync loop, never inside it: a slow
        or unreachable API server must not hold up a sync or the drift check (a node whose
        ruleset was removed stays open until that check has run)."""
        if self.relisting is not None and not self.relisting.done():
            return
        now = time.monotonic()
        if now >= self.next_relist or any(now >= at for at in self.relist_at.values()):
            self.relisting = asyncio.create_task(self._relist_task(), name="policyd-relist")

    async def _relist_task(self) -> None:
        try:
            await self.relist_due()
        except Exception:  # noqa: BLE001 - logged; the next due relist tries again
            log.exception("relist failed")
        finally:
            self.wake.set()

    async def sync_loop(self, longest: float = 1.0) -> None:
        """Sleep until an event wakes it or the runner or a relist is next due (at most
        `longest`): an idle agent wakes about once a second, for the drift check."""
        while True:
            self.heartbeat = time.monotonic()
            self.start_relists()
            await self.sync_in_worker()
            now = time.monotonic()
            relisting = self.relisting is not None and not self.relisting.done()  # its end wakes the loop
            at = min([now + longest, *(() if relisting else (self.next_relist, *self.relist_at.values()))])
            if self.feed.ready:
                at = min(at, self.runner.next_due(now))
            if at > now and not self.wake.is_set():
                try:
                    await asyncio.wait_for(self.wake.wait(), at - now)
                except TimeoutError:
                    pass
            self.wake.clear()
