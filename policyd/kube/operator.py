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

The pieces: kube/agent.py (the shared state, lists, relists, the sync loop), kube/http.py
(the endpoints), kube/registry.py (kopf's handlers and settings), kube/memory.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from ..dataplane.config import DispatchMode
from ..observe.flows import FlowRecorder
from .agent import ClusterAgent, Lister
from .api import credentials, list_pages
from .feed import WatchKind
from .http import http_apps
from .lean_kopf import kopf
from .memory import freeze_heap
from .registry import build_registry, operator_settings
from .settings import AgentSettings

log = logging.getLogger("policyd.agent")

LEAN_KINDS: tuple[WatchKind, ...] = ("Pod", "Node")  # watched by LeanWatches of our own, not by kopf


async def serve(agent: ClusterAgent, stop: asyncio.Event | None = None) -> None:
    """kopf, the sync loop and the HTTP endpoints until kopf stops (SIGTERM/SIGINT)."""
    st = agent.settings
    runners = []
    for port, app in http_apps(agent).items():
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
