"""The typed kernel layer: every rule a backend spells parses back to the same rule
(`parse(spell(x)) == x`, for every match kind, both backends), what a backend cannot read
parses to something no rule equals, and one ordered plan serves both backends (the kernel's
own listings are held to the same round trip in tests/kernel/test_round_trip.py)."""

from __future__ import annotations

import ipaddress
import shlex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyd.dataplane import ops
from policyd.dataplane import rules as ir
from policyd.dataplane.objects import ChainDef, Hook, Ruleset
from policyd.ipt.layout import Names
from policyd.ipt.parse import parse_rule as ipt_parse
from policyd.ipt.spell import rule_args
from policyd.nft.parse import parse_rule as nft_parse
from policyd.nft.spell import rule_json

NAMES = Names("policyd")
HEX = "0123456789abcdef"
sides = st.sampled_from(list(ir.Side))
ports = st.lists(st.tuples(st.integers(1, 65535), st.integers(0, 100)).map(lambda t: (t[0], min(65535, t[0] + t[1]))),
                 min_size=1, max_size=6, unique=True).map(lambda ps: tuple(sorted(ps)))
l4 = st.builds(ir.L4, st.sampled_from(["tcp", "udp", "sctp"]), st.none() | ports)
comments = st.text("abcdefghijklmnopqrstuvwxyz0123456789/.-[]: ", max_size=60).map(str.strip)
states = st.lists(st.sampled_from(["established", "related", "invalid", "new"]), min_size=1, max_size=3, unique=True).map(
    lambda s: ir.CtState(tuple(sorted(s))))


def set_name(kind: str, family: int) -> str:
    return f"policyd-{kind}-{HEX * 1}-{family}"


def nets(family: int) -> st.SearchStrategy[str]:
    if family == 4:
        return st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 31)).map(
            lambda t: str(ipaddress.IPv4Network((t[0], t[1]), strict=False)))
    return st.tuples(st.integers(0, 2**128 - 1), st.integers(1, 127)).map(
        lambda t: str(ipaddress.IPv6Network((t[0], t[1]), strict=False)))


@st.composite
def rules(draw: st.DrawFn, backend: str) -> ir.Rule:
    """A random rule of the closed vocabulary that `backend` can spell."""
    family = draw(st.sampled_from([4, 6]))
    kinds = draw(st.sets(st.sampled_from(["ctmark", "ct", "icmp6", "prefix", "ifset", "net", "ifaddr", "addr", "addrport", "l4"]), max_size=4))
    ms: list = []
    peer_side = draw(sides)
    if "ctmark" in kinds:
        ms.append(ir.CtMark(draw(st.integers(1, 2**32 - 1))))
    if "ct" in kinds:
        ms.append(draw(states))
    if "icmp6" in kinds and not {"l4", "addrport"} & kinds:
        family = 6
        nd = st.sampled_from([133, 134, 135, 136])
        ms.append(ir.Icmp6Types(tuple(sorted(draw(st.sets(nd, min_size=1, max_size=4 if backend == "nftables" else 1))))))
    if "prefix" in kinds:
        ms.append(ir.IfacePrefix(peer_side, draw(st.sampled_from(["cali", "veth", "lxc"]))))
    if "ifset" in kinds:
        ms.append(ir.IfaceSet(peer_side, set_name("ifaces", family), draw(st.booleans())))
    if "net" in kinds:
        ms.append(ir.NetMatch(draw(sides), family, draw(nets(family)), draw(st.booleans())))
    if "ifaddr" in kinds:
        ms.append(ir.IfaceAddrSet(family, set_name("addr", family), draw(st.booleans())))
    if "addrport" in kinds:
        ms.append(ir.AddrPortSet(peer_side, family, set_name("np", family)))
    elif "addr" in kinds:
        ms.append(ir.AddrSet(peer_side, family, set_name(draw(st.sampled_from(["sel", "blk", "nd"])), family)))
    if "l4" in kinds and "addrport" not in kinds and not any(isinstance(m, ir.Icmp6Types) for m in ms):
        got = draw(l4)
        if backend == "iptables" and got.ports is not None and sum(1 if a == b else 2 for a, b in got.ports) > 15:
            got = ir.L4(got.proto, got.ports[:5])
        ms.append(got)
    log = draw(st.none() | st.builds(ir.Log, st.integers(0, 65535), st.integers(1, 10000), st.integers(1, 100000)))
    verdicts = [ir.ACCEPT, ir.DROP, ir.RETURN, ir.Verdict(ir.Kind.JUMP, "POLICYD-INA-" + HEX[:12]), ir.Verdict(ir.Kind.GOTO, "POLICYD-INP-" + HEX[:12])]
    both = backend == "nftables" and draw(st.booleans())  # an iptables rule logs (NFLOG) or decides
    verdict = None if log is not None and not both else draw(st.sampled_from(verdicts))
    counter = backend == "nftables" and verdict in (ir.RETURN, ir.DROP) and draw(st.booleans())
    return ir.Rule.build(ms, verdict, draw(comments), family, log, counter)


def same_but_family(a: ir.Rule, b: object) -> bool:
    """iptables lists a rule in its family's table: equal but for the family field."""
    return isinstance(b, ir.Rule) and (a.matches, a.verdict, a.log, a.counter, a.comment, a.id) == \
        (b.matches, b.verdict, b.log, b.counter, b.comment, b.id)


@settings(max_examples=500, deadline=None)
@given(rules("nftables"))
def test_nftables_reads_back_every_rule_it_writes(rule):
    assert nft_parse(rule_json(rule)) == rule


@settings(max_examples=500, deadline=None)
@given(rules("iptables"))
def test_iptables_reads_back_every_rule_it_writes(rule):
    line = f"-A POLICYD-IN-{HEX[:12]} {rule_args(rule)}"
    got = ipt_parse(line, NAMES, rule.family or 4)
    assert same_but_family(rule, got), (line, got)


def test_dispatch_rules_round_trip_in_both_backends():
    for side, fam, name in ((ir.Side.SRC, 0, "EGRESS-IF"), (ir.Side.DST, 4, "INGRESS-V4"), (ir.Side.SRC, 6, "EGRESS-V6")):
        rule = ir.Rule.build([], ir.Verdict(ir.Kind.DISPATCH, "POLICYD-" + name, side, fam), "dispatch", fam)
        assert nft_parse(rule_json(rule)) == rule
        assert same_but_family(rule, ipt_parse(f"-A POLICYD-FORWARD {rule_args(rule)}", NAMES, fam or 4))


@pytest.mark.parametrize("body", [
    {"expr": [{"match": {"op": "==", "left": {"meta": {"key": "mark"}}, "right": 1}}, {"accept": None}], "comment": "x"},
    {"expr": [{"queue": {"num": 1}}]},
    {"expr": [{"accept": None}, {"drop": None}]},
    {"expr": "nonsense"},
    {"expr": [{"limit": {"rate": 1, "per": "second"}}, {"log": {"prefix": "pd-0000000000000000", "group": 1}}], "comment": "(r:1111111111111111)"},
])
def test_nftables_reads_what_it_never_writes_as_unknown(body):
    assert isinstance(nft_parse(body), ir.Unknown)


@pytest.mark.parametrize("line", [
    "-A POLICYD-IN-x -m mark --mark 0x1 -j ACCEPT",
    "-A POLICYD-IN-x -j ACCEPT -j DROP",
    "-A POLICYD-IN-x -m set --match-set someone-elses src -j RETURN",
    "-A POLICYD-IN-x -s not-an-address -j RETURN",
    '-A POLICYD-IN-x -m limit --limit 1/sec --limit-burst 1 -m comment --comment "(r:1111111111111111)" -j NFLOG --nflog-prefix pd-2 --nflog-group 1',
    "-A POLICYD-IN-x -p tcp -m tcp --sport 80 --dport 81 -j RETURN",
])
def test_iptables_reads_what_it_never_writes_as_unknown(line):
    assert isinstance(ipt_parse(line, NAMES, 4), ir.Unknown)


def test_a_changed_comment_or_id_is_another_rule():
    rule = ir.Rule.build([ir.AddrSet(ir.Side.SRC, 4, set_name("sel", 4))], ir.RETURN, "ns/p ingress[0] from[0]")
    body = rule_json(rule)
    assert nft_parse(body) == rule
    assert nft_parse({**body, "comment": body["comment"].replace("ingress[0]", "ingress[1]")}) != rule
    assert nft_parse({**body, "comment": body["comment"][:-3] + "00)"}) != rule
    tokens = shlex.split(rule_args(rule))
    assert "--comment" in tokens


def chain(name: str, *rules: ir.Rule, hook: Hook | None = None) -> ChainDef:
    return ChainDef.build(name, rules, hook)


def test_a_deleted_chain_is_flushed_first_and_deleted_a_second_later():
    """kube-proxy's deferred deletion: the transaction that removes what pointed at a chain
    only flushes it; a later one, at least STALE_DELAY after, deletes it."""
    r = ir.Rule.build([], ir.DROP, "x")
    have, want = Ruleset(chains={"a": chain("a", r), "b": chain("b", r)}), Ruleset(chains={"a": chain("a", r)})
    first = ops.plan(have, want, now=100.0)
    assert [type(o).__name__ for o in first.ops] == ["FlushChain"] and first.stale == {"b": 100.0}
    have.chains["b"] = ops.stale_chain("b")
    assert not ops.plan(have, want, stale=first.stale, now=100.5), "not yet"
    later = ops.plan(have, want, stale=first.stale, now=100.0 + ops.STALE_DELAY)
    assert [type(o).__name__ for o in later.ops] == ["DeleteChain"] and later.stale == {}


def test_a_base_chain_whose_hook_changed_is_made_again():
    """N3: a base chain re-made by someone else with policy drop (or another priority or
    type): the plan deletes and re-creates it, both backends spell it."""
    r = ir.Rule.build([], ir.ACCEPT, "x")
    want = chain("forward-hook", r, hook=Hook("forward"))
    listed = ChainDef.read("forward-hook", want.rules, Hook("forward", policy="drop"))
    p = ops.plan(Ruleset(chains={"forward-hook": listed}), Ruleset(chains={"forward-hook": want}))
    assert [type(o).__name__ for o in p.ops] == ["FlushChain", "DeleteChain", "CreateChain", "FillChain"]


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_every_kernel_rule_of_a_node_has_its_own_id(backend):
    """One id names one kernel rule: the same policy rule in two pods' chains, or the same
    base rule in two base chains, are two rules with two ids (a drop logged by one pod's
    chain is never named after another's)."""
    from policyd.backends import make_dialect
    from policyd.dataplane.config import DispatchMode, RenderConfig
    from policyd.dataplane.desired import DesiredState
    from policyd.dataplane.droplog import DropLog
    from policyd.whatif.world import load_world

    w = load_world(["examples/cluster", "examples/policies", "examples/cluster-network-policy/admin-tiers-on-the-demo-cluster.yaml"])
    c = w.compile("node-1")
    for mode in DispatchMode:
        d = DesiredState(RenderConfig(mode=mode, drop_log=DropLog(accepts=1), counters=True), make_dialect(backend, "policyd").renderer(
            RenderConfig(mode=mode, drop_log=DropLog(accepts=1), counters=True)))
        for spec in c.sets:
            d.update_set(spec, c)
        for key in c.plans:
            d.update_pod(key, c, lambda k, ips: "cali" + str(abs(hash(k)))[:8])
        ids = [r.id for ch in d.ruleset.chains.values() for r in ch.rules if isinstance(r, ir.Rule)]
        assert len(ids) > 50 and len(ids) == len(set(ids))
