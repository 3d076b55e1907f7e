"""The agent's lean pod record enforces what the full object says: random Pods written as the
API server serves them (managedFields, annotations, owner references, conditions, container
statuses, volumes, tolerations: everything the record drops) go through the agent's feed
(ClusterFeed: the record it keeps, interned labels and names, hashed uids) as ADDED,
MODIFIED and DELETED events; the compiler must end with the plans and set contents of a
from-scratch compile of Pod objects written independently from the same parameters."""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from policyd.compile.engine import Compiler, compile_all
from policyd.kube.feed import ClusterFeed
from policyd.model.objects import ContainerPort, Namespace, Pod
from tests.sequences.test_incremental import NAMESPACES, labels, policy, snapshot

PORTS = [ContainerPort(80, "TCP", "http"), ContainerPort(53, "UDP", "dns"), ContainerPort(8080, "TCP", None)]

pod_params = st.fixed_dictionaries({
    "ns": st.sampled_from(NAMESPACES),
    "labels": labels,
    "node": st.sampled_from(["node-0", "node-1"]),
    "ports": st.lists(st.sampled_from(range(len(PORTS))), unique=True, max_size=3),
    "phase": st.sampled_from(["Running", "Running", "Pending", "Succeeded", "Failed"]),
    "host_network": st.sampled_from([False, False, False, True]),
    "with_ip": st.sampled_from([True, True, True, False]),
})


def address(i: int) -> str:
    return f"10.0.{i // 200}.{i % 200 + 1}"


def full_object(i: int, p: dict[str, Any], rv: int) -> dict[str, Any]:
    """A Pod as the API server serves it, with the fields no enforcement reads."""
    containers = [{"name": "c", "image": "registry.invalid/app:1", "imagePullPolicy": "IfNotPresent",
                   "terminationMessagePath": "/dev/termination-log", "resources": {},
                   "ports": [{"containerPort": PORTS[k].port, "protocol": PORTS[k].protocol,
                              **({"name": PORTS[k].name} if PORTS[k].name else {})} for k in p["ports"]]}]
    status: dict[str, Any] = {"phase": p["phase"], "qosClass": "BestEffort",
                              "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-05T00:00:00Z"}],
                              "containerStatuses": [{"name": "c", "ready": True, "restartCount": 0, "image": "x",
                                                     "imageID": "", "started": True, "state": {"running": {}}}]}
    if p["with_ip"]:
        status |= {"podIP": address(i), "podIPs": [{"ip": address(i)}], "hostIP": "172.31.0.1"}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"p{i}", "namespace": p["ns"], "uid": f"00000000-0000-0000-0000-{i:012d}", "resourceVersion": str(rv),
                     "labels": dict(p["labels"]), "annotations": {"kubectl.kubernetes.io/restartedAt": "now", "note": "x" * 40},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u", "controller": True}],
                     "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                                        "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {".": {}}},
                                                                               "f:spec": {'k:{"name":"c"}': {".": {}}}}}]},
        "spec": {"nodeName": p["node"], "containers": containers, "restartPolicy": "Always", "dnsPolicy": "ClusterFirst",
                 "hostNetwork": p["host_network"], "schedulerName": "default-scheduler", "serviceAccountName": "default",
                 "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}],
                 "volumes": [{"name": "kube-api-access", "projected": {"sources": []}}]},
        "status": status,
    }


def model_pod(i: int, p: dict[str, Any]) -> Pod:
    """The same pod, written directly as the model's record."""
    return Pod(p["ns"], f"p{i}", dict(p["labels"]), p["node"], (ipaddress.ip_address(address(i)),) if p["with_ip"] else (),
               tuple(PORTS[k] for k in p["ports"]), p["host_network"], p["phase"])


step = st.tuples(st.integers(0, 11), st.one_of(pod_params, st.none()))  # (pod index, new parameters | deleted)


@settings(max_examples=200, deadline=None)
@given(st.lists(policy, max_size=4), st.lists(step, min_size=1, max_size=30), st.sampled_from(["node-0", None]))
def test_the_feed_record_compiles_like_the_full_object(policies, steps, node):
    namespaces = [Namespace(n, {"kubernetes.io/metadata.name": n}) for n in NAMESPACES]
    feed = ClusterFeed(Compiler(node))
    for ns in namespaces:
        feed.observe("Namespace", "ADDED", {"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": ns.name, "uid": f"ns-{ns.name}", "resourceVersion": "1", "labels": dict(ns.labels)}})
    for pol in policies:
        feed.compiler.upsert_policy(pol)
    final: dict[int, dict[str, Any]] = {}
    for rv, (i, params) in enumerate(steps, start=10):
        if params is None:
            if i in final:
                feed.observe("Pod", "DELETED", full_object(i, final.pop(i), rv))
            continue
        if i in final and final[i]["ns"] != params["ns"]:  # another namespace: another object; the old one goes
            feed.observe("Pod", "DELETED", full_object(i, final.pop(i), rv))
        feed.observe("Pod", "MODIFIED" if i in final else "ADDED", full_object(i, params, rv))
        final[i] = params
    expected = compile_all(node, namespaces, [model_pod(i, p) for i, p in sorted(final.items())], policies)
    assert snapshot(feed.compiler) == snapshot(expected)
