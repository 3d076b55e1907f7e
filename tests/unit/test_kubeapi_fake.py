"""The test API server (harness/kubeapi) behaves like the real one where the agent depends on
it: the same checks run against a real kube-apiserver in tests/cluster/test_kubeapi_real.py.
Expired continue tokens are checked here only: a real server expires them when etcd
compacts, which a test cannot ask for."""

from __future__ import annotations

import json

import pytest

from harness.kubeapi import behaviour
from harness.kubeapi.server import KubeAPI


@pytest.fixture
def api():
    from kubernetes import client

    server = KubeAPI(bookmark_every=0.2, grace_cap=0.2)
    url = server.serve()
    cfg = client.Configuration()
    cfg.host = url
    yield server, client.ApiClient(cfg)
    server.stop()


def test_paged_list_is_a_snapshot(api):
    server, c = api
    behaviour.check_paged_list_is_a_snapshot(c, behaviour.fresh_namespace(c))


def test_pod_deletion_is_graceful(api):
    server, c = api
    behaviour.check_pod_deletion_is_graceful(c, behaviour.fresh_namespace(c), "node-1", "registry.invalid/none")


def test_namespace_deletion_terminates_first(api):
    server, c = api
    behaviour.check_namespace_deletion_terminates_first(c, "node-1", "registry.invalid/none")


def test_expired_continue_token_is_410(api):
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    server, c = api
    ns = behaviour.fresh_namespace(c)
    net = client.NetworkingV1Api(c)
    for i in range(3):
        net.create_namespaced_network_policy(ns, {"metadata": {"name": f"p{i}"}, "spec": {"podSelector": {}}})
    token = json.loads(net.list_namespaced_network_policy(ns, limit=1, _preload_content=False).data)["metadata"]["continue"]
    net.create_namespaced_network_policy(ns, {"metadata": {"name": "later"}, "spec": {"podSelector": {}}})
    server.compact()  # history up to now is gone, and with it the list's revision
    with pytest.raises(ApiException) as e:
        net.list_namespaced_network_policy(ns, limit=1, _continue=token)
    assert e.value.status == 410 and "Expired" in e.value.body
