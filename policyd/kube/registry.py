"""kopf wired as an observer only: one `on.event` handler per kind kopf watches (Pods and
Nodes are watched by LeanWatches instead), login through kube/api.py, and the operator
settings that keep kopf from writing anything to the objects."""

from __future__ import annotations

from typing import Any, cast

from .agent import ClusterAgent
from .api import API_VERSIONS, PLURALS, credentials
from .feed import WatchKind
from .lean_kopf import kopf

FINALIZER = "policyd.dev/never-set"  # kopf needs a name; no handler of ours ever asks for it


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
