"""The checks of harness/kubeapi/behaviour.py against a real kube-apiserver: what the test API
server is held to (tests/unit/test_kubeapi_fake.py) is what the real one does."""

from __future__ import annotations

from harness.kubeapi import behaviour
from policyd.lab.netns import entered
from realcluster.cluster import Cluster
from realcluster.images import TESTBOX


def test_the_fake_matches_the_real_api_server(cluster: Cluster) -> None:
    from kubernetes import config

    api = config.new_client_from_config(config_file=str(cluster.layout.kubeconfig))
    with entered(cluster.layout.fabric):  # the API server is reachable from the fabric only
        ns = behaviour.fresh_namespace(api)
        behaviour.check_paged_list_is_a_snapshot(api, ns)
        behaviour.check_pod_deletion_is_graceful(api, ns, "node-1", TESTBOX)
        behaviour.check_namespace_deletion_terminates_first(api, "node-2", TESTBOX)
