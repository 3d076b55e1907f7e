"""The table of API-accepted and API-rejected NetworkPolicy inputs (tests/validation_cases.py)
checked against a real kube-apiserver with a server-side dry run: the expectations that
policyd's parser is held to (tests/unit/test_validation_table.py) are the API server's."""

from __future__ import annotations

import json

import pytest

from realcluster.cluster import Cluster
from tests.validation_cases import CASES, policy_object


def test_the_table_is_what_the_api_server_does(cluster: Cluster) -> None:
    if cluster.layout.cni != "bridge":
        pytest.skip("validation does not depend on the CNI: checked once, on the bridge cluster")
    wrong = []
    for i, (name, spec, accepted) in enumerate(CASES):
        obj = policy_object(f"case-{i}", spec)
        proc = cluster.kubectl("create", "--dry-run=server", "-f", "-", "-o", "name", input=json.dumps(obj), check=False)
        if (proc.returncode == 0) != accepted:
            wrong.append(f"{name}: API server {'accepted' if proc.returncode == 0 else 'rejected'} "
                         f"({proc.stderr.strip()[-300:]}), table says {'accepted' if accepted else 'rejected'}")
    assert not wrong, "\n".join(wrong)
