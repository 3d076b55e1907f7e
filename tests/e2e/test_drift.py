"""Drift and tampering on a running lab: whatever is done to policyd's objects in the node's
kernel — a rule inserted at the top of a chain (the chain's digest, in its last rule, is
untouched), a rule appended, a chain flushed, the table deleted, a jump from the hook
removed, a set element removed, added or swapped for another, a foreign chain or set in
our namespace, every iptables chain removed from one address family only — the agent
notices, names it (lab status: `drift_repairs` by kind) and repairs it, and the policy holds
again. Each repair is timed and must come from the one-second check within 3 s: no full
resync runs during the test."""

from __future__ import annotations

import pytest

from harness.tampering import repair_times
from policyd.backends import BACKENDS as BACKENDS
from policyd.lab.lab import Lab

RESYNC = 600.0  # no periodic resync during the test: every repair is the check's
pytestmark = pytest.mark.quiet  # the 3 s bound: not beside the background upstream suites


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_kind_of_drift_is_noticed_and_repaired(make_lab, backend, monkeypatch):
    monkeypatch.setenv("POLICYD_LAB_RESYNC", str(RESYNC))
    lab: Lab = make_lab(["examples/cluster/demo.yaml", "examples/policies/allow-frontend-to-backend.yaml"], "routed",
                        backend=backend)

    def policy_holds(st: dict, backend_pod: dict) -> None:
        frontend = next(p for p in st["pods"] if "/frontend-" in p["pod"])
        unallowed = next(p for p in st["pods"] if "/unallowed-" in p["pod"])
        assert lab.probe(frontend["pod"], backend_pod["pod"], "TCP", 80, 0.5).allowed[frontend["pod"]] == [backend_pod["pod"]]
        assert lab.probe(unallowed["pod"], backend_pod["pod"], "TCP", 80, 0.5).allowed[unallowed["pod"]] == []

    timings = repair_times(lab, backend, after_each=policy_holds)
    print(f"\n{backend} drift repair times: " + "; ".join(f"{w}: {t:.2f} s" for w, _, t in timings))
