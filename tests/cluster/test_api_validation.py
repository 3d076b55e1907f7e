"""The tables of API-accepted and API-rejected NetworkPolicy and ClusterNetworkPolicy inputs
(tests/validation_cases.py, tests/cnp_validation_cases.py) checked against a real
kube-apiserver with a server-side dry run: the expectations that policyd's parsers are held to
(tests/unit) are the API server's."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from realcluster.cluster import Cluster
from realcluster.cnp_conformance import CRD_NAME, install_crd
from tests.cnp_validation_cases import CASES as CNP_CASES
from tests.cnp_validation_cases import EXPERIMENTAL_CASES, cnp_object
from tests.validation_cases import CASES, policy_object


def test_the_table_is_what_the_api_server_does(cluster: Cluster) -> None:
    if cluster.layout.cni != "bridge":
        pytest.skip("validation does not depend on the CNI: checked once, on the bridge cluster")
    assert_table(cluster, CASES, policy_object)


def assert_table(cluster: Cluster, cases: list[tuple[str, Any, bool]], make: Callable[[str, Any], dict[str, Any]]) -> None:
    """Every case through a server-side dry-run create: accepted or rejected as the table says."""
    wrong = []
    for i, (name, spec, accepted) in enumerate(cases):
        proc = cluster.kubectl("create", "--dry-run=server", "-f", "-", "-o", "name", input=json.dumps(make(f"case-{i}", spec)),
                               check=False)
        if (proc.returncode == 0) != accepted:
            wrong.append(f"{name}: API server {'accepted' if proc.returncode == 0 else 'rejected'} "
                         f"({proc.stderr.strip()[-300:]}), table says {'accepted' if accepted else 'rejected'}")
    assert not wrong, "\n".join(wrong)


def test_the_cluster_policy_table_is_what_the_api_server_does(cluster: Cluster) -> None:
    """The same for ClusterNetworkPolicy (tests/cnp_validation_cases.py), with the CRD the
    chart carries: its OpenAPI bounds and CEL rules are the API server's to apply."""
    if cluster.layout.cni != "bridge":
        pytest.skip("validation does not depend on the CNI: checked once, on the bridge cluster")
    had_crd = cluster.kubectl("get", f"crd/{CRD_NAME}", check=False).returncode == 0
    if not had_crd:
        install_crd(cluster)
    try:
        assert_table(cluster, CNP_CASES + EXPERIMENTAL_CASES, cnp_object)  # (the chart's CRD is the experimental channel's)
    finally:
        if not had_crd:
            cluster.kubectl("delete", f"crd/{CRD_NAME}", "--wait=true")
