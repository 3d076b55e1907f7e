"""The bitset matrix (`policyd matrix`) equals the Evaluator (`policyd explain`) pair by
pair, per pod and grouped by profile, for random clusters and several services."""

from __future__ import annotations

from hypothesis import given, settings

from policyd.compile.engine import Compiler, compile_all
from policyd.compile.evaluate import Evaluator
from policyd.whatif.matrix import compute, compute_grouped, endpoint
from tests.sequences.test_incremental import apply, populated

SERVICES = [("TCP", 80), ("TCP", 81), ("TCP", 8080), ("TCP", 1003), ("UDP", 53), ("UDP", 80), ("SCTP", 80), ("ICMP", None)]


@settings(max_examples=200, deadline=None)
@given(populated)
def test_matrix_equals_the_evaluator(base):
    c = Compiler(None)
    for ev in base:
        apply(c, ev)
    s = c.store
    c = compile_all(None, list(s.namespaces.values()), list(s.pods.values()), list(s.policies.values()))
    for protocol, port in SERVICES:
        check(c, list(s.pods.values()), protocol, port)


def check(c: Compiler, all_pods: list, protocol: str, port: int | None) -> None:
    pods = sorted((p for p in all_pods if p.addressable), key=lambda p: p.key)
    ev = Evaluator(c)
    expected = {(a.key, b.key) for a in pods for b in pods
                if a.key == b.key or ev.verdict(endpoint(a), endpoint(b), protocol, port).allowed}

    m = compute(c, all_pods, protocol, port)
    assert m.pods == [p.key for p in pods]
    assert {(a, b) for a, to in m.allowed.items() for b in to} == expected

    g = compute_grouped(c, all_pods, protocol, port)
    group_of = {p: name for name, members in g.groups.items() for p in members}
    assert sorted(group_of) == m.pods, "every addressable pod in exactly one group"
    got = {(a.key, b.key) for a in pods for b in pods if a.key == b.key or group_of[b.key] in g.allowed[group_of[a.key]]}
    assert got == expected
    # Groups are exactly the profiles: pods that every pod treats alike (the rules' own
    # verdict on a pod reaching itself included), and no two groups alike.
    by_rules = {(a.key, b.key) for a in pods for b in pods if ev.verdict(endpoint(a), endpoint(b), protocol, port).allowed}
    profile = {a: (frozenset(b for b in m.pods if (a, b) in by_rules), frozenset(b for b in m.pods if (b, a) in by_rules))
               for a in m.pods}
    assert len(g.groups) == len(set(profile.values()))
    assert all(len({profile[p] for p in members}) == 1 for members in g.groups.values())
