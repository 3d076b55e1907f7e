"""What the agent relies on from an API server, as checks that run against any server
through the `kubernetes` client: tests/unit/test_kubeapi_fake.py runs them against our test
server, tests/cluster/test_kubeapi_real.py against a real kube-apiserver, so the fake is held
to the real thing wherever it stands in for it."""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

POLICY_API = "networking.k8s.io/v1"


def _policy(name: str) -> dict[str, Any]:
    return {"apiVersion": POLICY_API, "kind": "NetworkPolicy", "metadata": {"name": name},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}


def _pod(name: str, node: str, image: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "c", "image": image, "imagePullPolicy": "Never", "command": ["sleep", "600"]}]}}


def fresh_namespace(api: Any) -> str:
    from kubernetes import client

    name = f"kb-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(api).create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def check_paged_list_is_a_snapshot(api: Any, ns: str) -> None:
    """Pages after the first come from the first page's snapshot: objects created or deleted
    meanwhile neither appear nor vanish, and every page carries the same resourceVersion."""
    from kubernetes import client

    net = client.NetworkingV1Api(api)
    for i in range(5):
        net.create_namespaced_network_policy(ns, _policy(f"p{i}"))
    first = json.loads(net.list_namespaced_network_policy(ns, limit=2, _preload_content=False).data)
    net.create_namespaced_network_policy(ns, _policy("p9-late"))
    net.delete_namespaced_network_policy("p4", ns)
    names = [i["metadata"]["name"] for i in first["items"]]
    rvs = {first["metadata"]["resourceVersion"]}
    token = first["metadata"]["continue"]
    while token:
        page = json.loads(net.list_namespaced_network_policy(ns, limit=2, _continue=token, _preload_content=False).data)
        names += [i["metadata"]["name"] for i in page["items"]]
        rvs.add(page["metadata"]["resourceVersion"])
        token = page["metadata"].get("continue")
    assert names == ["p0", "p1", "p2", "p3", "p4"], names
    assert len(rvs) == 1, rvs
    now = [i.metadata.name for i in net.list_namespaced_network_policy(ns).items]
    assert now == ["p0", "p1", "p2", "p3", "p9-late"], now


def _watch(list_fn: Callable[..., Any], rv: str, out: queue.Queue[tuple[str, dict[str, Any]]], stop: threading.Event,
           **kw: Any) -> None:
    from kubernetes import watch

    w = watch.Watch()
    try:
        for ev in w.stream(list_fn, resource_version=rv, timeout_seconds=60, _preload_content=False, **kw):
            out.put((ev["type"], ev["raw_object"]))
            if stop.is_set():
                break
    except Exception:  # noqa: BLE001 - once the check is over, the server may go away under a quiet watch
        if not stop.is_set():
            raise
    finally:
        w.stop()


def _collect(out: queue.Queue[tuple[str, dict[str, Any]]], until: Callable[[str, dict[str, Any]], bool],
             timeout: float) -> list[tuple[str, dict[str, Any]]]:
    seen: list[tuple[str, dict[str, Any]]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            typ, obj = out.get(timeout=0.2)
        except queue.Empty:
            continue
        seen.append((typ, obj))
        if until(typ, obj):
            return seen
    raise AssertionError(f"not seen within {timeout} s; saw {[(t, o['metadata'].get('deletionTimestamp')) for t, o in seen]}")


def check_pod_deletion_is_graceful(api: Any, ns: str, node: str, image: str) -> None:
    """Deleting a pod bound to a node: a MODIFIED event with deletionTimestamp comes first,
    DELETED later (a terminating pod still exists, with its address)."""
    from kubernetes import client

    core = client.CoreV1Api(api)
    created = core.create_namespaced_pod(ns, _pod("graceful", node, image))
    out: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
    stop = threading.Event()
    threading.Thread(target=_watch, args=(core.list_namespaced_pod, created.metadata.resource_version, out, stop),
                     kwargs={"namespace": ns}, daemon=True).start()
    time.sleep(0.5)
    core.delete_namespaced_pod("graceful", ns)
    seen = _collect(out, lambda t, o: t == "DELETED", 60)
    stop.set()
    after = [(t, o) for t, o in seen if t == "DELETED" or o["metadata"].get("deletionTimestamp")]
    assert after[0][0] == "MODIFIED" and after[0][1]["metadata"]["deletionTimestamp"], [t for t, _ in seen]
    assert after[-1][0] == "DELETED"


def check_namespace_deletion_terminates_first(api: Any, node: str, image: str) -> None:
    """Deleting a namespace: it turns Terminating (MODIFIED) while its pods go, and is
    DELETED only after them."""
    from kubernetes import client

    core = client.CoreV1Api(api)
    ns = fresh_namespace(api)
    core.create_namespaced_pod(ns, _pod("inside", node, image))
    rv = core.read_namespace(ns).metadata.resource_version
    out: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
    stop = threading.Event()
    threading.Thread(target=_watch, args=(core.list_namespace, rv, out, stop),
                     kwargs={"field_selector": f"metadata.name={ns}"}, daemon=True).start()
    time.sleep(0.5)
    core.delete_namespace(ns)
    seen = _collect(out, lambda t, o: t == "DELETED", 90)
    stop.set()
    assert seen[0][0] == "MODIFIED" and (seen[0][1].get("status") or {}).get("phase") == "Terminating", seen[0]
    assert not core.list_namespaced_pod(ns).items
