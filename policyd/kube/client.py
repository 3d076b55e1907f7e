"""Read-only reads of a live cluster for the what-if tools (`matrix/explain --kubeconfig`,
through kube/api.py's paged lists), and the `kubernetes` client where the tools need it:
node addresses (kube/sdk.py reads credentials kube/api.py does not). Only `list` calls. The agent image carries no `kubernetes`
client (`pip install policyd[node]`): such a kubeconfig there is refused with the reason."""

from __future__ import annotations

import asyncio
from typing import Any

from ..model.objects import ClusterNetworkPolicy, Namespace, NetworkPolicy, Node, Pod
from ..model.parse import parse_object
from ..model.problems import InvalidInput, Problem
from ..observe.counters import Counters, counters_from_metrics
from .api import credentials, list_pages
from .feed import WATCHED_KINDS, NotServed, WatchKind
from .sdk import api_client


def list_all(kubeconfig: str | None, kind: WatchKind, context: str | None = None) -> list[dict[str, Any]]:
    """Every object of `kind`, through the agent's own paged lists (kube/api.py)."""
    async def collect() -> list[dict[str, Any]]:
        info = credentials(kubeconfig, context)
        return [item async for items, _ in list_pages(info, kind) for item in items]

    return asyncio.run(collect())


def read_cluster(kubeconfig: str | None = None, context: str | None = None,
                 ) -> tuple[list[Namespace], list[Pod], list[NetworkPolicy], list[ClusterNetworkPolicy], list[Node]]:
    """The cluster's namespaces, pods, policies and nodes for `policyd matrix/explain --kubeconfig`.
    A policy that fails validation is kept (it isolates and allows nothing, as the agent
    enforces it); any other unreadable object is an error listing every problem. Without
    the ClusterNetworkPolicy CRD there are none."""
    out: dict[str, list[Any]] = {k: [] for k in WATCHED_KINDS}
    problems: list[Problem] = []
    for kind in WATCHED_KINDS:
        try:
            items = list_all(kubeconfig, kind, context)
        except NotServed:
            continue
        for item in items:
            meta = item.get("metadata") or {}
            obj, probs = parse_object(item, f"{kind} {meta.get('namespace', '')}/{meta.get('name', '')}".replace(" /", " "), None,
                                      live=True)
            if obj is not None and (not probs or isinstance(obj, NetworkPolicy | ClusterNetworkPolicy)):
                out[kind].append(obj)
            else:
                problems += probs
    if problems:
        raise InvalidInput(problems)
    return out["Namespace"], out["Pod"], out["NetworkPolicy"], out["ClusterNetworkPolicy"], out["Node"]


def node_addresses(kubeconfig: str | None = None, context: str | None = None) -> dict[str, str]:
    """Each node's InternalIP (else its first address): where its agent serves /metrics on
    the host network."""
    from kubernetes import client

    out = {}
    for node in client.CoreV1Api(api_client(kubeconfig, context)).list_node().items:
        addresses = node.status.addresses or []
        pick = next((a for a in addresses if a.type == "InternalIP"), addresses[0] if addresses else None)
        if pick is not None:
            out[node.metadata.name] = pick.address
    return out


def agent_counters(address: str, port: int, timeout: float = 5.0) -> Counters:
    """A node agent's rule counters, from its /metrics (the agent needs --rule-counters)."""
    import urllib.request

    with urllib.request.urlopen(agent_url(address, port, "/metrics"), timeout=timeout) as r:
        return counters_from_metrics(r.read().decode())


def agent_url(address: str, port: int, path: str) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}{path}"


def agent_flows(address: str, port: int, timeout: float = 10.0) -> dict[str, Any]:
    """A node agent's flow records, from its /flows (the agent needs --flows)."""
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(agent_url(address, port, "/flows"), timeout=timeout) as r:
            doc: dict[str, Any] = json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise OSError(e.read().decode(errors="replace").strip() or str(e)) from None
    return doc
