"""Render + diff against the fake backend: operation counts of typical events, ordering
the kernel accepts, failure handling. (The same claims are checked on the real kernel in
tests/kernel.)"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest

from policyd.dataplane.backend import ApplyError
from policyd.dataplane.config import DispatchMode, RenderConfig
from policyd.nft.fake import FakeBackend
from policyd.reconcile.syncer import Syncer
from policyd.whatif.world import load_world
from tests.helpers import settle


@pytest.fixture(params=list(DispatchMode))
def agent(request):
    w = load_world(["examples/cluster", "examples/policies/allow-frontend-to-backend.yaml", "examples/policies/default-deny-egress-allow-dns.yaml"])
    c = w.compile("node-1")
    s = Syncer(c, FakeBackend(), RenderConfig(mode=request.param))
    s.interfaces.refresh = lambda: None  # type: ignore[method-assign]
    s.interfaces.routes = {str(p.ips[0]): f"cali{i}" for i, p in enumerate(w.pods)}
    s.sync()
    return w, c, s


def test_first_sync_builds_and_second_is_empty(agent):
    _, _, s = agent
    assert s.sync().ops == 0
    assert s.sync(full=True).ops == 0
    assert s.backend.read().same_as(s.desired.ruleset)


def test_remote_pod_added_changes_only_set_elements(agent):
    w, c, s = agent
    pod = next(p for p in w.pods if p.name.startswith("frontend") and p.node == "node-2")
    c.upsert_pod(replace(pod, name="frontend-new", ips=(ipaddress.ip_address("10.244.1.77"),)))
    tx_before = len(s.backend.transactions)
    r = s.sync()
    (tx,) = s.backend.transactions[tx_before:]
    # one element in the frontend set, one in the all-pods set of the DNS egress rule
    assert r.ops == 2 and [list(cmd)[0] for cmd in tx.commands] == ["add", "add"]
    assert all("element" in cmd["add"] for cmd in tx.commands)


def test_policy_change_rewrites_only_its_chains(agent):
    w, c, s = agent
    pol = next(p for p in w.policies if p.name == "allow-frontend-to-backend")
    c.upsert_policy(replace(pol, ingress=pol.ingress[:0]))
    n = len(s.backend.transactions)
    s.sync()
    (tx,) = s.backend.transactions[n:]
    flushed = {cmd["flush"]["chain"]["name"] for cmd in tx.commands if "flush" in cmd}
    assert flushed and all(name.startswith("pod-in-") and "backend" in name for name in flushed)


def test_failure_keeps_state_and_forces_full_sync(agent):
    w, c, s = agent
    before = s.backend.read()
    c.delete_policy("default/allow-frontend-to-backend")
    s.backend.fail_next = True
    with pytest.raises(ApplyError):
        s.sync()
    assert s.backend.read().same_as(before)
    r = s.sync()
    assert r.full and r.ops > 0
    assert settle(s).ops > 0, "the chains of the deleted policy's pods are deleted a second after their flush"
    assert s.backend.read().same_as(s.desired.ruleset)


def test_resync_lists_everything_and_the_check_lists_elements_within_its_budget(agent):
    """A full resync reads elements too (element drift is repaired); the frequent check
    reads every rule, and peer-set elements (up to 100k) only within its CPU budget: the
    first look lists them, one right after it does not."""
    _, c, s = agent
    assert s.backend.reads == [True], "the first sync must list everything"
    assert s.sync(full=True).ops == 0 and s.backend.reads[-1] is True
    assert s.check() == [] and s.backend.reads[-1] is True and s.element_looks == 1
    assert s.check() == [] and s.backend.reads[-1] is False and s.element_looks == 1, "no element listing within the budget"


def test_resync_repairs_chain_drift_and_takes_pending_changes(agent):
    w, c, s = agent
    fb = s.backend
    victim = next(n for n in fb.ruleset.chains if n.startswith("pod-in-"))
    fb.rules[victim] = [{"expr": [{"accept": None}], "comment": "intruder"}]  # drift: digest gone
    pod = next(p for p in w.pods if p.name.startswith("frontend"))
    c.upsert_pod(replace(pod, name="frontend-extra", ips=(ipaddress.ip_address("10.244.1.99"),)))
    r = s.sync(full=True)
    assert r.full and [(d.kind, d.name) for d in r.drift] == [("rules-changed", victim)]
    assert fb.read().same_as(s.desired.ruleset)
    assert fb.rules[victim][-1]["comment"].endswith(")"), "the chain was rewritten"
    assert s.sync(full=True).ops == 0


@pytest.mark.parametrize("tamper,kind", [
    ("insert", "rules-changed"), ("replace", "rules-changed"), ("append", "rules-changed"), ("flush", "chain-flushed"),
    ("drop-element", "set-elements"), ("add-element", "set-elements"), ("foreign-set", "foreign-set"),
    ("foreign-chain", "foreign-chain"), ("delete-chain", "chain-missing"), ("delete-table", "table-missing"),
    ("flush-map", "map-elements"), ("flush-spoof-set", "set-elements"),
])
def test_every_kind_of_drift_is_found_and_repaired(agent, tamper, kind):
    """A rule inserted at the top of a chain (the digest in the last rule's comment still
    matches), one changed in place, elements removed or added, objects added or deleted:
    the resync names the drift and repairs it, and the one-second check sees all but the
    peer sets' elements (it lists no set elements) at once."""
    from policyd.dataplane.objects import ChainDef, SetDef, SetKind

    _, _, s = agent
    fb = s.backend
    victim = next(n for n in fb.ruleset.chains if n.startswith("pod-in-"))
    sel = next(n for n, st in fb.ruleset.sets.items() if n.startswith("sel-") and st.elements)
    intruder = {"expr": [{"accept": None}], "comment": "intruder"}
    if tamper == "insert":
        fb.rules[victim].insert(0, intruder)
    elif tamper == "replace":
        fb.rules[victim][0] = {**fb.rules[victim][0], "expr": [{"accept": None}]}
    elif tamper == "append":
        fb.rules[victim].append(intruder)
    elif tamper == "flush":
        fb.rules[victim] = []
    elif tamper == "drop-element":
        st = fb.ruleset.sets[sel]
        fb.ruleset.sets[sel] = replace(st, elements=frozenset(sorted(st.elements, key=str)[1:]))
    elif tamper == "add-element":
        st = fb.ruleset.sets[sel]
        fb.ruleset.sets[sel] = replace(st, elements=st.elements | {"10.99.99.99"})
    elif tamper == "foreign-set":
        fb.ruleset.sets["stranger"] = SetDef("stranger", SetKind.ADDR, 4, elements=frozenset({"1.2.3.4"}))
    elif tamper == "foreign-chain":
        fb.ruleset.chains["stranger"] = ChainDef("stranger")
        fb.rules["stranger"] = [intruder]
    elif tamper == "delete-chain":
        del fb.ruleset.chains[victim]
        fb.rules.pop(victim)
        for m, md in list(fb.ruleset.maps.items()):
            fb.ruleset.maps[m] = replace(md, elements=tuple(e for e in md.elements if e[1] != victim))
    elif tamper == "delete-table":
        fb.delete_table()
    elif tamper == "flush-spoof-set":
        own = next((n for n, st in fb.ruleset.sets.items() if n.startswith("pod-") and st.elements), None)
        if own is None:
            pytest.skip("address dispatch keeps no sets of its own")
        fb.ruleset.sets[own] = replace(fb.ruleset.sets[own], elements=frozenset())
    elif tamper == "flush-map":
        m = next(n for n, md in fb.ruleset.maps.items() if md.elements)
        fb.ruleset.maps[m] = replace(fb.ruleset.maps[m], elements=())
    structural = tamper not in ("drop-element", "add-element")  # what the check sees without listing elements
    s.next_element_look = float("inf")
    assert bool(s.check()) == structural
    s.next_element_look = float("-inf")
    assert s.check(), "a check that lists elements sees every tamper"
    r = s.sync(full=True)
    assert kind in {d.kind for d in r.drift}, r.drift
    settle(s)  # (a foreign chain is flushed, then deleted)
    assert fb.read().same_as(s.desired.ruleset) and s.sync(full=True).ops == 0 and s.check() == []


def test_fake_refuses_what_the_kernel_refuses():
    from policyd.nft.spell import Transaction

    fb = FakeBackend()
    tx = Transaction()
    tx.add("add", {"table": {"family": "inet", "name": "policyd"}})
    tx.add("delete", {"element": {"family": "inet", "table": "policyd", "name": "missing", "elem": ["10.0.0.1"]}})
    with pytest.raises(ApplyError):
        fb.apply(tx)
    assert fb.read() is None, "all or nothing"


@pytest.mark.parametrize("mode", list(DispatchMode))
def test_rules_a_packet_meets_do_not_grow_with_unrelated_pods_and_policies(mode):
    """Per-packet cost: base chains and a pod's own chains are the same size whether the
    cluster has 7 pods and 2 policies or 2,000 more pods and 200 more policies elsewhere;
    the growth goes into set and map elements (hash lookups), never into rules."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    import synthetic

    from policyd.compile.engine import compile_all

    def chains(extra: bool) -> dict[str, int]:
        w = load_world(["examples/cluster", "examples/policies/allow-frontend-to-backend.yaml"])
        nss, pods, pols = list(w.namespaces), list(w.pods), list(w.policies)
        if extra:
            nss += synthetic.namespaces(20)
            pods += [synthetic.pod(i, 20, 10) for i in range(2_000)]
            pols += synthetic.policies(200, 20)
        s = Syncer(compile_all("node-1", nss, pods, pols), FakeBackend(), RenderConfig(mode=mode))
        s.interfaces.refresh = lambda: None  # type: ignore[method-assign]
        s.interfaces.routes = {str(p.ips[0]): f"cali{i}" for i, p in enumerate(pods) if p.ips}
        s.sync()
        rules = s.backend.rules
        return {n: len(r) for n, r in rules.items() if n.endswith("-hook") or "/backend-" in n or "/frontend-" in n}

    small, big = chains(False), chains(True)
    assert small and small == {n: big[n] for n in small}


def test_a_periodic_rebuild_with_changes_not_yet_synced_is_no_divergence(agent):
    """The periodic resync rebuilds desired state and compares it with the kept one; events
    that arrived since the last sync are folded in first, not counted as a divergence."""
    w, c, s = agent
    pod = next(p for p in w.pods if p.node == "node-1")
    c.upsert_pod(replace(pod, labels={**pod.labels, "extra": "yes"}))
    c.upsert_pod(replace(pod, name="frontend-late", ips=(ipaddress.ip_address("10.244.1.88"),)))
    assert s.sync(full=True, rebuild=True).ops > 0
    assert s.divergences == 0 and s.backend.read().same_as(s.desired.ruleset)


def test_a_policy_added_to_a_pod_is_appended_not_refilled():
    """A pod selected by 40 policies, one more: its chain is changed by deleting the old
    final drop and appending the new policy's rule and a new drop, not flushed and refilled
    (the cost of an event must not grow with the chain); one removed from the middle: its
    rule deleted by handle. The kernel then holds the rules in another order than a fresh
    render, which is the same chain: a full sync finds nothing to do."""
    from tests.chain_edits import policy

    w = load_world(["examples/cluster/demo.yaml"])
    c = w.compile("node-1")
    fb = FakeBackend()
    s = Syncer(c, fb, RenderConfig(mode=DispatchMode.ADDRESS))
    for i in range(40):
        c.upsert_policy(policy(f"p{i}", "frontend", [1000 + i]))
    s.sync()
    for name, change in (("p40", lambda: c.upsert_policy(policy("p40", "frontend", [2000]))), ("p7", lambda: c.delete_policy("default/p7"))):
        change()
        n = len(fb.transactions)
        r = s.sync()
        verbs = sorted({next(iter(cmd)) for tx in fb.transactions[n:] for cmd in tx.commands})
        assert verbs == ["add", "delete"] and r.ops <= 8, (name, r.ops, fb.transactions[n:][0].commands)
        assert s.sync(full=True).ops == 0, f"{name}: the kernel holds desired, in its own order"
    rebuilt = s.sync(full=True, rebuild=True)
    assert rebuilt.ops == 0 and s.divergences == 0


@pytest.mark.parametrize("logged", [False, True])
def test_random_policy_changes_leave_the_fake_holding_desired(logged):
    from tests.chain_edits import run

    out = run(FakeBackend(), 150, seed=3, logged=logged)
    assert out.edited > 50 and out.refilled < out.edited, out
