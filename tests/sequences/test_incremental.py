"""Incremental compile == from-scratch compile, for random event sequences (Felix-style):
events applied one by one (and duplicated) must leave the same plans and set contents as a
fresh compile of the final objects."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from policyd.compile.engine import Compiler, compile_all
from policyd.model.objects import ContainerPort, Direction, IPBlock, Namespace, NetworkPolicy, Peer, Pod, PolicyPort, PolicyRule
from policyd.model.selectors import LabelSelector, Requirement

KEYS = ["app", "tier"]
VALUES = ["a", "b"]
NAMESPACES = ["n0", "n1", "n2"]

labels = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=2)
requirement = st.builds(
    lambda k, op, vs: Requirement(k, op, tuple(sorted(set(vs))) if op in ("In", "NotIn") else ()),
    st.sampled_from(KEYS),
    st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]),
    st.lists(st.sampled_from(VALUES), min_size=1, max_size=2),
)
selector = st.builds(lambda ml, ex: LabelSelector.build(ml, ex), labels, st.lists(requirement, max_size=1))
port = st.one_of(
    st.builds(PolicyPort, st.sampled_from(["TCP", "UDP"]), st.sampled_from([80, 81, None, "http", "dns"])),
    st.builds(lambda p: PolicyPort("TCP", p, p + 5), st.sampled_from([80, 1000])),
)
block = st.builds(lambda n: IPBlock(ipaddress.ip_network("10.0.0.0/16"), (ipaddress.ip_network(f"10.0.{n}.0/24"),)), st.integers(0, 2))
peer = st.one_of(
    st.builds(Peer, selector, st.none()),
    st.builds(Peer, selector, selector),
    st.builds(lambda b: Peer(ip_block=b), block),
)
rule = st.builds(lambda ps, pts: PolicyRule(tuple(ps), tuple(pts)), st.lists(peer, max_size=2), st.lists(port, max_size=2))
policy = st.builds(
    lambda ns, name, sel, ing, eg, types: NetworkPolicy(ns, name, sel, tuple(ing), tuple(eg), frozenset(types) or frozenset({Direction.INGRESS})),
    st.sampled_from(NAMESPACES),
    st.sampled_from(["p0", "p1", "p2"]),
    selector,
    st.lists(rule, max_size=2),
    st.lists(rule, max_size=2),
    st.sets(st.sampled_from(list(Direction))),
)
pod = st.builds(
    lambda ns, name, lab, node, ip, http, phase, hostnet: Pod(
        ns, name, lab, node,
        (ipaddress.ip_address(f"10.0.{ip % 3}.{ip}"),) if ip else (),
        (ContainerPort(http, "TCP", "http"), ContainerPort(53, "UDP", "dns")),
        hostnet, phase,
    ),
    st.sampled_from(NAMESPACES),
    st.sampled_from(["a", "b", "c", "d"]),
    labels,
    st.sampled_from(["node-1", "node-1", "node-2"]),
    st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
    st.sampled_from([80, 8080]),
    st.sampled_from(["Running"] * 5 + ["Succeeded"]),
    st.sampled_from([False] * 5 + [True]),
)
namespace = st.builds(Namespace, st.sampled_from(NAMESPACES), labels)
# A populated cluster first, so that random events hit live sets and local plans.
populated = st.tuples(
    st.lists(namespace, min_size=3, max_size=3),
    st.lists(policy, min_size=2, max_size=4),
    st.lists(pod, min_size=4, max_size=8),
).map(lambda t: [("ns", x) for x in t[0]] + [("policy", x) for x in t[1]] + [("pod", x) for x in t[2]])
event = st.one_of(
    st.tuples(st.just("pod"), pod),
    st.tuples(st.just("del-pod"), st.sampled_from(NAMESPACES), st.sampled_from(["a", "b", "c", "d"])),
    st.tuples(st.just("ns"), namespace),
    st.tuples(st.just("del-ns"), st.sampled_from(NAMESPACES)),
    st.tuples(st.just("policy"), policy),
    st.tuples(st.just("del-policy"), st.sampled_from(NAMESPACES), st.sampled_from(["p0", "p1", "p2"])),
)


def apply(c: Compiler, ev) -> None:
    kind = ev[0]
    if kind == "pod":
        c.upsert_pod(ev[1])
    elif kind == "del-pod":
        c.delete_pod(f"{ev[1]}/{ev[2]}")
    elif kind == "ns":
        c.upsert_namespace(ev[1])
    elif kind == "del-ns":
        c.delete_namespace(ev[1])
    elif kind == "policy":
        c.upsert_policy(ev[1])
    else:
        c.delete_policy(f"{ev[1]}/{ev[2]}")


def snapshot(c: Compiler):
    sets = {spec: c.set_entries(spec) for spec in c.sets}
    refs = {spec: live.refs for spec, live in c.sets.items()}
    return c.plans, sets, refs


def scratch(c: Compiler) -> Compiler:
    s = c.store
    return compile_all(c.node, list(s.namespaces.values()), list(s.pods.values()), list(s.policies.values()))


@settings(max_examples=300, deadline=None)
@given(populated, st.lists(event, max_size=40), st.sampled_from(["node-1", None]))
def test_incremental_equals_scratch(base, events, node):
    c = Compiler(node)
    for ev in base + events:
        apply(c, ev)
    assert snapshot(c) == snapshot(scratch(c))


@settings(max_examples=100, deadline=None)
@given(populated, st.lists(event, max_size=30))
def test_duplicated_events_are_idempotent(base, events):
    once, twice = Compiler("node-1"), Compiler("node-1")
    for ev in base + events:
        apply(once, ev)
        apply(twice, ev)
        apply(twice, ev)
    assert snapshot(once) == snapshot(twice)


@settings(max_examples=100, deadline=None)
@given(populated, st.lists(event, max_size=30))
def test_changes_cover_every_difference(base, events):
    """Whatever changed between two snapshots is reported by take_changes()."""
    c = Compiler("node-1")
    for ev in base + events:
        before_plans = dict(c.plans)
        before_sets = {spec: c.set_entries(spec) for spec in c.sets}
        apply(c, ev)
        ch = c.take_changes()
        for key in set(before_plans) | set(c.plans):
            if before_plans.get(key) != c.plans.get(key):
                assert key in ch.pods
        for spec in set(before_sets) | set(c.sets):
            if (spec in c.sets) != (spec in before_sets) or before_sets.get(spec) != (c.set_entries(spec) if spec in c.sets else None):
                assert spec in ch.sets


def test_deleting_a_member_pod_marks_its_set_changed():
    from policyd.model.selectors import MATCH_ALL

    c = Compiler("node-1")
    c.upsert_namespace(Namespace("n0", {}))
    c.upsert_policy(NetworkPolicy("n0", "p0", MATCH_ALL, (PolicyRule((Peer(MATCH_ALL, None),), ()),)))
    c.upsert_pod(Pod("n0", "a", {}, "node-1", (ipaddress.ip_address("10.0.0.1"),)))
    c.upsert_pod(Pod("n0", "b", {}, "node-2", (ipaddress.ip_address("10.0.1.1"),)))
    c.take_changes()
    c.delete_pod("n0/b")
    ch = c.take_changes()
    (spec,) = c.sets
    assert ch.sets == {spec} and not ch.pods, "a remote pod's deletion changes set elements, not plans"
    assert c.set_entries(spec) == {ipaddress.ip_address("10.0.0.1")}


# --- the dataplane: desired/diff/apply against the fake backend ----------------------------


def settle(s):
    from tests.helpers import settle as settled

    return settled(s)


def _syncer(c: Compiler, mode, backend: str = "nftables"):
    from policyd.dataplane.config import RenderConfig
    from policyd.ipt.fake import FakeIptBackend
    from policyd.nft.fake import FakeBackend
    from policyd.reconcile.syncer import Syncer

    s = Syncer(c, FakeBackend() if backend == "nftables" else FakeIptBackend(), RenderConfig(mode=mode))
    s.interfaces.refresh = lambda: None  # type: ignore[method-assign]
    s.interfaces.routes = {f"10.0.{i % 3}.{i}": f"cali{i}" for i in range(10)}
    return s


@settings(max_examples=300, deadline=None)
@given(populated, st.lists(st.tuples(event, st.booleans()), max_size=40), st.sampled_from(["interface", "address"]),
       st.sampled_from(["nftables", "iptables"]))
def test_partial_syncs_leave_the_kernel_equal_to_a_scratch_build(base, events, mode, backend):
    """Element deltas, whole-set rebuilds and chain rewrites, synced after random subsets of
    events: the (fake) kernel must end equal to a fresh agent's first sync, and a full
    resync (reading the kernel back with its elements) must then find nothing to do."""
    from policyd.dataplane.config import DispatchMode

    c = Compiler("node-1")
    for ev in base:
        apply(c, ev)
    s = _syncer(c, DispatchMode(mode), backend)
    s.sync()
    for ev, sync_now in events:
        apply(c, ev)
        if sync_now:
            s.sync()
    s.sync()
    settle(s)
    fresh = _syncer(scratch(c), DispatchMode(mode), backend)
    fresh.sync()
    assert s.backend.read().same_as(fresh.backend.read())
    assert s.sync(full=True).ops == 0


class Flaky(Exception):
    """An injected failure."""


FAULTS = ["absorb-set", "absorb-pod", "spell", "read", "apply-before", "apply-after", "compile"]


def as_event(ev):
    """A test event as the model event a source hands the compiler (Compiler.apply)."""
    from policyd.model.events import Delete, Upsert

    kind = ev[0]
    if kind in ("pod", "ns", "policy"):
        return Upsert(ev[1])
    return {"del-pod": lambda: Delete("Pod", f"{ev[1]}/{ev[2]}"), "del-ns": lambda: Delete("Namespace", ev[1]),
            "del-policy": lambda: Delete("NetworkPolicy", f"{ev[1]}/{ev[2]}")}[kind]()


def _inject_compiler(c: Compiler, after: int):
    """Make the compiler fail part way through the next event, after `after` good steps of
    its incremental work (the store already holds the event's object): returns an undo."""
    calls = [0]
    undo = []
    for name in ("_replan", "_put"):
        real = getattr(c, name)

        def flaky(*args, real=real, **kw):
            calls[0] += 1
            if calls[0] > after:
                raise Flaky("compile")
            return real(*args, **kw)

        setattr(c, name, flaky)
        undo.append(name)
    return lambda: [delattr(c, n) for n in undo]


def _inject(s, fault: str, after: int):
    """Make one step of the next sync fail (after `after` good calls, where a step is called
    repeatedly): returns an undo."""
    if fault.startswith("absorb"):
        owner, name = s.desired, "update_set" if fault == "absorb-set" else "update_pod"
    elif fault in ("spell", "read"):
        owner, name = s.backend, fault
    else:
        owner, name = s.backend, "apply"
    real = getattr(owner, name)
    calls = [0]

    def flaky(*args, **kw):
        calls[0] += 1
        if fault == "apply-after":
            real(*args, **kw)  # the kernel took it; the syncer never learns
            raise Flaky(fault)
        if calls[0] > after:
            raise Flaky(fault)
        return real(*args, **kw)

    setattr(owner, name, flaky)
    return lambda: delattr(owner, name)


@settings(max_examples=300, deadline=None)
@given(populated, st.lists(st.tuples(event, st.booleans(), st.one_of(st.none(), st.sampled_from(FAULTS)), st.integers(0, 2)),
                           max_size=30),
       st.sampled_from(["interface", "address"]), st.sampled_from(["nftables", "iptables"]))
def test_a_failure_anywhere_in_a_sync_is_healed_by_the_next(base, steps, mode, backend):
    """Failures injected at random points of random syncs (absorbing the compiler's changes
    part way, spelling, reading the kernel, before or after the kernel takes a batch) and of
    the compiler itself (an event that fails part way through its incremental work): the
    sync after the last one must leave the (fake) kernel equal to a fresh agent's first
    sync, and a periodic resync must then find nothing to do and no divergence between the
    incrementally kept desired state and a rebuild, nor between the compiler and a compile
    from scratch."""
    from policyd.dataplane.config import DispatchMode

    c = Compiler("node-1")
    for ev in base:
        apply(c, ev)
    s = _syncer(c, DispatchMode(mode), backend)
    s.sync()
    failed = 0
    for ev, sync_now, fault, after in steps:
        if fault == "compile":
            undo = _inject_compiler(c, after)
            try:
                c.apply(as_event(ev))
            except Flaky:
                assert c.dirty, "a failed event leaves the compiler dirty"
            finally:
                undo()
            fault = None
        else:
            c.apply(as_event(ev))
        if fault is None and not sync_now:
            continue
        undo = _inject(s, fault, after) if fault else (lambda: None)
        try:
            s.sync()
        except Flaky:
            failed += 1
        finally:
            undo()
    s.sync()
    settle(s)
    fresh = _syncer(scratch(c), DispatchMode(mode), backend)
    fresh.sync()
    assert s.backend.read().same_as(fresh.backend.read())
    assert s.sync(full=True, rebuild=True).ops == 0
    assert s.divergences == 0
    assert not c.dirty and c.rebuild(compare=True), "the compiler equals a compile from scratch"
