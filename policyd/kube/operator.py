"""`policyd run`: the node agent as a kopf operator that only observes.

kopf watches Namespaces, Pods and NetworkPolicies cluster-wide; its only handlers are
`@kopf.on.event` (each change, fed to the `ClusterFeed`). The initial state comes from
lists of our own: nothing is programmed before all three are in. (kopf's `@kopf.index`
would gate the handlers the same way, but its gate re-checks every waiting object each
time one more is indexed: quadratic, 28 s at 2,000 pods, minutes at 5,000.) Where kopf's
own first listing overlaps ours, the feed skips what it has seen; an object deleted in
between is found by the relist that kopf's listing schedules.
Handlers return nothing, since kopf would patch a returned value into the
object; there are no change/create/delete handlers, so no finalizer is ever set and nothing is
stored on the objects; peering is off (`standalone`) and so is cluster scanning. The only
writes are Kubernetes Events on policies that cannot be enforced as written.

Handlers only update the cluster state and wake the sync loop; one coalescing
`SyncRunner` compiles, diffs and applies (minimum interval, retries with backoff, a
periodic full resync). The kernel work of a sync runs on a worker thread, so watches,
/healthz and /readyz keep answering during a long commit; the compiler is shared under the
syncer's lock (held by the handlers while they feed it, and by the sync while it takes the
compiler's changes). /metrics is served on its port, /healthz and /readyz on the health
port (the same port serves both when they are equal). SIGTERM stops kopf and leaves the
ruleset in place (`policyd cleanup` removes it).
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from typing import Any, cast

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..backends import make_backend
from ..compile.engine import Compiler
from ..dataplane.backend import AnyBackend
from ..dataplane.config import DispatchMode, RenderConfig
from ..model.events import Delete
from ..model.objects import NetworkPolicy
from ..observe.flows import FlowRecorder
from ..reconcile.core import AgentCore
from ..reconcile.syncer import SyncResult
from .api import API_VERSIONS, PLURALS, credentials, list_pages
from .events import EventPoster
from .feed import WATCHED_KINDS, ClusterFeed, Finding, NotServed, WatchKind, ref_of
from .lean_kopf import kopf
from .metrics import AgentMetrics
from .settings import AgentSettings, FailMode
from .watch import LeanWatch

log = logging.getLogger("policyd.agent")

LEAN_KINDS: tuple[WatchKind, ...] = ("Pod", "Node")  # watched by LeanWatches of our own, not by kopf
MAX_POSTED = 10_000  # findings remembered as posted (each a few hundred bytes)
RELIST_BACKOFF = (1.0, 60.0)  # a failed scheduled relist is retried after 1 s, 2 s, 4 s … at most a minute
FINALIZER = "policyd.dev/never-set"  # kopf needs a name; no handler of ours ever asks for it
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
                           counters=settings.rule_counters, fqdn=settings.fqdn)
        self.core = AgentCore(settings.node_name, backend or make_backend(settings.backend, settings.table), cfg,
                              resync_every=settings.resync_every, min_interval=settings.min_interval)
        self.compiler, self.syncer, self.runner = self.core.compiler, self.core.syncer, self.core.runner
        self.feed = ClusterFeed(self.compiler)
        self.metrics = AgentMetrics()
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

    # --- http: /metrics, /healthz, /readyz ------------------------------------------------

    def http_apps(self) -> dict[int, web.Application]:
        """port → the app serving it: /metrics on the metrics port, /healthz and /readyz on
        the health port (one app when the ports are equal; a port of 0 serves nothing)."""
        async def metrics(_: web.Request) -> web.Response:
            if self.settings.rule_counters:  # read from the kernel per scrape, off the event loop
                try:
                    self.metrics.rules.update(await asyncio.to_thread(self.core.rule_counters))
                except Exception as e:  # noqa: BLE001 - the other metrics are still worth serving
                    log.warning("reading the rule counters failed: %s", e)
            return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

        async def flows(_: web.Request) -> web.Response:
            table = self.metrics.flows.table
            if table is None:
                return web.json_response({"error": "flow records are off: start the agent with --flows N (chart: flows.enabled)"},
                                         status=404)
            return web.json_response(table.to_json(self.settings.node_name))

        async def healthz(_: web.Request) -> web.Response:
            age = time.monotonic() - self.heartbeat
            ok = age < 30
            return web.json_response({"alive": ok, "sync_loop_seconds_ago": round(age, 3)}, status=200 if ok else 503)

        async def readyz(_: web.Request) -> web.Response:
            now = time.monotonic()
            # Readiness is about enforcement (lists in, kernel in step); the watches are
            # reported, not judged: a quiet cluster sends no events, and kopf re-opens a
            # broken watch by itself (relisting after a 410, which the relist repair follows).
            doc = {"kind": "AgentStatus", "version": 1, "ready": self.ready, "initial_lists_complete": self.feed.ready, **self.core.status(),
                   "seconds_since_watch_event": {k: round(now - t, 1) for k, t in sorted(self.last_watch_event.items())},
                   "seconds_since_relist": None if self.last_relist_ok is None else round(now - self.last_relist_ok, 1),
                   **{f"{k.lower()}_watch": asdict(w.stats) for k, w in self.lean.items()}}
            if self.metrics.names.reader is not None:
                doc["names"] = self.metrics.names.reader.status()
            drops = self.metrics.drop_log.counters
            if drops is not None:  # the drop log's threads are supervised: say when they failed
                doc["drop_log"] = {"restarts": dict(drops.restarts), "last_error": drops.last_error}
            return web.json_response(doc, status=200 if self.ready else 503)

        apps: dict[int, web.Application] = {}
        st = self.settings
        for port, routes in ((st.metrics_port, {"/metrics": metrics, "/flows": flows}),
                             (st.health_port, {"/healthz": healthz, "/readyz": readyz})):
            if port:
                app = apps.setdefault(port, web.Application())
                for path, handler in routes.items():
                    app.router.add_get(path, handler)
        return apps


def freeze_heap(why: str) -> None:
    """Move every object alive now out of the cyclic collector's reach. After the initial
    lists the heap holds every pod and policy (and, after kopf's first listing, kopf's copy
    of each): a full collection then walks millions of objects and stalls the event loop
    for 200 ms, which was the p99 of event → commit. Reference counting still frees them."""
    t = time.perf_counter()
    gc.collect()
    gc.freeze()
    trimmed = release_free_memory()
    log.info("heap frozen %s: %d objects, %.0f ms%s", why, gc.get_freeze_count(), (time.perf_counter() - t) * 1e3,
             ", free memory returned to the system" if trimmed else "")


def release_free_memory() -> bool:
    """glibc keeps the memory of large transient buffers (a page of 500 pods as JSON, the
    first transaction of 170k operations) for reuse instead of returning it: malloc_trim
    hands it back, so the resident size is what the agent holds, not what it once needed."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False  # not glibc: nothing to trim
    return bool(libc.malloc_trim(0))


def build_registry(agent: ClusterAgent) -> kopf.OperatorRegistry:
    """Observer-only handlers on a registry of our own (nothing registered globally)."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return credentials(agent.settings.kubeconfig)

    for kind, api_version in API_VERSIONS.items():
        if kind in agent.unserved or kind in agent.lean:
            continue
        plural = PLURALS[kind]
        resource = (*api_version.split("/"), plural)  # (group, version, plural), or (version, plural) for the core group

        async def on_event(*, event: kopf.RawEvent, _kind: WatchKind = kind, **_: Any) -> None:
            body = cast("dict[str, Any]", event["object"])  # the object as the API server sent it
            for f in agent.observe(_kind, event.get("type"), body):
                await agent.events.post(f, body)
            return None  # a returned value would be patched into the object

        kopf.on.event(*resource, id=f"policyd_observe_{plural}", registry=registry)(on_event)
    return registry


def operator_settings() -> kopf.OperatorSettings:
    s = kopf.OperatorSettings()
    s.peering.standalone = True
    s.scanning.disabled = True
    s.persistence.finalizer = FINALIZER
    s.posting.enabled = False  # our Events are posted by EventPoster (node, action, no repeats)
    # kopf runs a worker per object; its default keeps each 5 s after its last event: at
    # 10,000 policies listed at once, 70 MB more.
    s.batching.idle_timeout = 0.5
    s.watching.server_timeout = 300
    s.watching.client_timeout = 330
    s.watching.connect_timeout = 10
    s.networking.request_timeout = 30
    return s


async def serve(agent: ClusterAgent, stop: asyncio.Event | None = None) -> None:
    """kopf, the sync loop and the HTTP endpoints until kopf stops (SIGTERM/SIGINT)."""
    st = agent.settings
    runners = []
    for port, app in agent.http_apps().items():
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, st.metrics_address or None, port).start()  # None: every address, both families
        runners.append(runner)
        log.info("%s on %s port %d", ", ".join(r.resource.canonical for r in app.router.routes() if r.resource is not None),
                 st.metrics_address or "every address", port)
    sync = asyncio.create_task(agent.sync_loop(), name="policyd-sync")
    drops = None
    if st.drop_log is not None:
        drops = agent.core.drop_logger(st.log_format)
        drops.start()  # binds the NFLOG group here: the agent's (the node's) network namespace
        agent.metrics.drop_log.attach(drops.counters)
        log.info("drop log on: NFLOG group %d, at most %d packets/s (burst %d) per drop rule", st.drop_log.group,
                 st.drop_log.rate, st.drop_log.burst)
    learner = None
    if st.fqdn is not None:
        learner = agent.core.names_learner(st.fqdn_limits)
        learner.start()  # binds the queue here: the agent's (the node's) network namespace
        agent.metrics.names.attach(learner)
        log.info("domainNames: DNS answers to the pods such a rule selects are learned on NFQUEUE %d (fail %s)", st.fqdn.queue,
                 "open" if st.fqdn.fail_open else "closed")
    recorder = None
    if st.flows:
        table = agent.core.flow_table(st.flows)
        recorder = FlowRecorder(table)
        recorder.start()  # subscribes here: the agent's (the node's) network namespace, its conntrack
        agent.metrics.flows.attach(table)
        log.info("flow records on: the local pods' new connections, at most %d records, on /flows", st.flows)
    watches: list[asyncio.Task[None]] = []
    try:
        if agent.lister is not None:
            # Before kopf starts: its own first listing keeps the event loop busy for
            # seconds, and readiness should not wait for that. Pods and Nodes are then
            # watched by LeanWatches from the lists' resourceVersions, not by kopf (see
            # kube/watch.py): the two kinds that grow with the cluster, and Nodes change
            # every few seconds (their status), which cost kopf's machinery per event on
            # every agent.
            await agent.initial_lists()
            freeze_heap("after the initial lists")
            for kind in LEAN_KINDS:
                watches.append(asyncio.create_task(agent.lean_watch(kind).run(agent.list_rv.get(kind)),
                                                   name=f"policyd-watch-{kind.lower()}s"))
        await kopf.operator(registry=build_registry(agent), settings=operator_settings(), standalone=True,
                            clusterwide=True, stop_flag=stop)
    finally:
        sync.cancel()
        if agent.relisting is not None:
            agent.relisting.cancel()
        for w in watches:
            w.cancel()
        if drops is not None:
            drops.stop()
        if recorder is not None:
            recorder.stop()
        if learner is not None:
            learner.stop()
        for runner in runners:
            await runner.cleanup()
    log.info("stopped; the ruleset stays in place (policyd cleanup removes it)")


def kube_lister(kubeconfig: str | None) -> Lister:
    """Pages of each kind, through the agent's own HTTP access (kube/api.py)."""
    async def lister(kind: WatchKind) -> AsyncIterator[tuple[list[dict[str, Any]], int | None]]:
        info = await asyncio.to_thread(credentials, kubeconfig)  # read each time: a rotated token is picked up
        async for page in list_pages(info, kind):
            yield page

    return lister


def run(settings: AgentSettings, mode: DispatchMode) -> int:
    async def main() -> None:
        await serve(ClusterAgent(settings, mode, lister=kube_lister(settings.kubeconfig)))

    asyncio.run(main())
    return 0
