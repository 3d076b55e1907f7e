"""policyd reads NetworkPolicy manifests exactly as the API server does on create: what it
accepts, policyd accepts; what it rejects, policyd rejects (tests/validation_cases.py,
itself checked against a real kube-apiserver in tests/cluster/test_api_validation.py)."""

from __future__ import annotations

import pytest

from policyd.model.parse import parse_object
from tests.validation_cases import CASES, policy_object


@pytest.mark.parametrize("spec,accepted", [(s, a) for _, s, a in CASES], ids=[c[0] for c in CASES])
def test_policyd_accepts_what_the_api_server_accepts(spec, accepted):
    _, problems = parse_object(policy_object("p", spec), "case.yaml", 0)
    assert (not problems) == accepted, problems
