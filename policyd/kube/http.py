"""The agent's HTTP endpoints: /metrics and /flows on the metrics port, /healthz and
/readyz (the AgentStatus document, docs/json.md) on the health port."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .agent import ClusterAgent

log = logging.getLogger("policyd.agent")


def http_apps(agent: ClusterAgent) -> dict[int, web.Application]:
    """port → the app serving it: /metrics on the metrics port, /healthz and /readyz on
    the health port (one app when the ports are equal; a port of 0 serves nothing)."""
    async def metrics(_: web.Request) -> web.Response:
        if agent.settings.rule_counters:  # read from the kernel per scrape, off the event loop
            try:
                agent.metrics.rules.update(await asyncio.to_thread(agent.core.rule_counters))
            except Exception as e:  # noqa: BLE001 - the other metrics are still worth serving
                log.warning("reading the rule counters failed: %s", e)
        return web.Response(body=generate_latest(agent.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def flows(_: web.Request) -> web.Response:
        table = agent.metrics.flows.table
        if table is None:
            return web.json_response({"error": "flow records are off: start the agent with --flows N (chart: flows.enabled)"},
                                     status=404)
        return web.json_response(table.to_json(agent.settings.node_name))

    async def healthz(_: web.Request) -> web.Response:
        age = time.monotonic() - agent.heartbeat
        ok = age < 30
        return web.json_response({"alive": ok, "sync_loop_seconds_ago": round(age, 3)}, status=200 if ok else 503)

    async def readyz(_: web.Request) -> web.Response:
        now = time.monotonic()
        # Readiness is about enforcement (lists in, kernel in step); the watches are
        # reported, not judged: a quiet cluster sends no events, and kopf re-opens a
        # broken watch by itself (relisting after a 410, which the relist repair follows).
        doc = {"kind": "AgentStatus", "version": 1, "ready": agent.ready, "initial_lists_complete": agent.feed.ready, **agent.core.status(),
               "seconds_since_watch_event": {k: round(now - t, 1) for k, t in sorted(agent.last_watch_event.items())},
               "seconds_since_relist": None if agent.last_relist_ok is None else round(now - agent.last_relist_ok, 1),
               **{f"{k.lower()}_watch": asdict(w.stats) for k, w in agent.lean.items()}}
        if agent.metrics.names.reader is not None:
            doc["names"] = agent.metrics.names.reader.status()
        drops = agent.metrics.drop_log.counters
        if drops is not None:  # the drop log's threads are supervised: say when they failed
            doc["drop_log"] = {"restarts": dict(drops.restarts), "last_error": drops.last_error}
        return web.json_response(doc, status=200 if agent.ready else 503)

    apps: dict[int, web.Application] = {}
    st = agent.settings
    for port, routes in ((st.metrics_port, {"/metrics": metrics, "/flows": flows}),
                         (st.health_port, {"/healthz": healthz, "/readyz": readyz})):
        if port:
            app = apps.setdefault(port, web.Application())
            for path, handler in routes.items():
                app.router.add_get(path, handler)
    return apps
