"""Read-only access to a Kubernetes API through the `kubernetes` client: the relist check
of the agent and the live what-if tools. Only `list` calls; the agent never writes objects."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from ..model.objects import ClusterNetworkPolicy, Namespace, NetworkPolicy, Pod
from ..model.parse import parse_object
from ..model.problems import InvalidInput, Problem
from ..observe.counters import Counters, counters_from_metrics
from .feed import NotServed, WatchKind, rv_int

API_VERSIONS: dict[str, str] = {"Namespace": "v1", "Pod": "v1", "NetworkPolicy": "networking.k8s.io/v1",
                                "ClusterNetworkPolicy": "policy.networking.k8s.io/v1alpha2"}


def api_client(kubeconfig: str | None = None) -> Any:
    """In-cluster config when running in a pod (and no kubeconfig is given), else the
    kubeconfig file (`None`: $KUBECONFIG or ~/.kube/config)."""
    from kubernetes import client, config

    if kubeconfig is None:
        try:
            config.load_incluster_config()
            return client.ApiClient()
        except config.ConfigException:
            pass
    return config.new_client_from_config(config_file=kubeconfig)


def list_pages(api: Any, kind: WatchKind, page: int = 500) -> Iterator[tuple[list[dict[str, Any]], int | None]]:
    """Every object of `kind` as the API serves it (with apiVersion/kind filled in, which
    list items omit), one page at a time, with the list's resourceVersion: a caller that
    folds each page in never holds a whole list of 100k pods."""
    from kubernetes import client

    core, net, custom = client.CoreV1Api(api), client.NetworkingV1Api(api), client.CustomObjectsApi(api)

    def cluster_network_policies(**kw: Any) -> Any:
        try:
            return custom.list_cluster_custom_object("policy.networking.k8s.io", "v1alpha2", "clusternetworkpolicies", **kw)
        except client.ApiException as e:
            if e.status == 404:
                raise NotServed("no policy.networking.k8s.io/v1alpha2 clusternetworkpolicies") from None
            raise

    call = {"Namespace": core.list_namespace, "Pod": core.list_pod_for_all_namespaces,
            "NetworkPolicy": net.list_network_policy_for_all_namespaces, "ClusterNetworkPolicy": cluster_network_policies}[kind]
    token: str | None = None
    rv: int | None = None
    while True:
        kw: dict[str, Any] = {"limit": page, "_preload_content": False}
        if token:
            kw["_continue"] = token
        doc = json.loads(call(**kw).data)
        items = doc.get("items") or []
        for item in items:
            item.setdefault("apiVersion", API_VERSIONS[kind])
            item.setdefault("kind", kind)
        meta = doc.get("metadata") or {}
        if token is None:  # the first page's resourceVersion is the whole list's
            rv = rv_int(doc)
        yield items, rv
        token = meta.get("continue")
        if not token:
            return


def list_raw(api: Any, kind: WatchKind, page: int = 500) -> tuple[list[dict[str, Any]], int | None]:
    """The whole list at once (the what-if tools)."""
    items: list[dict[str, Any]] = []
    version = None
    for chunk, rv in list_pages(api, kind, page):
        items += chunk
        version = rv
    return items, version


def read_cluster(kubeconfig: str | None = None) -> tuple[list[Namespace], list[Pod], list[NetworkPolicy], list[ClusterNetworkPolicy]]:
    """The cluster's namespaces, pods and policies for `policyd matrix/explain --kubeconfig`.
    A policy that fails validation is kept (it isolates and allows nothing, as the agent
    enforces it); any other unreadable object is an error listing every problem. Without
    the ClusterNetworkPolicy CRD there are none."""
    api = api_client(kubeconfig)
    out: dict[str, list[Any]] = {k: [] for k in API_VERSIONS}
    problems: list[Problem] = []
    for kind in ("Namespace", "Pod", "NetworkPolicy", "ClusterNetworkPolicy"):
        try:
            items, _ = list_raw(api, kind)
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
    return out["Namespace"], out["Pod"], out["NetworkPolicy"], out["ClusterNetworkPolicy"]


def node_addresses(kubeconfig: str | None = None) -> dict[str, str]:
    """Each node's InternalIP (else its first address): where its agent serves /metrics on
    the host network."""
    from kubernetes import client

    out = {}
    for node in client.CoreV1Api(api_client(kubeconfig)).list_node().items:
        addresses = node.status.addresses or []
        pick = next((a for a in addresses if a.type == "InternalIP"), addresses[0] if addresses else None)
        if pick is not None:
            out[node.metadata.name] = pick.address
    return out


def agent_counters(address: str, port: int, timeout: float = 5.0) -> Counters:
    """A node agent's rule counters, from its /metrics (the agent needs --rule-counters)."""
    import urllib.request

    with urllib.request.urlopen(f"http://{address}:{port}/metrics", timeout=timeout) as r:
        return counters_from_metrics(r.read().decode())
