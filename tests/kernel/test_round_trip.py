"""The kernel lists back exactly the rules a backend wrote, as the same typed rules: every match
kind, verdict, log and counter, in a throwaway namespace, for nftables (libnftables folds
what it can imply: the parser reads its normal form) and for legacy iptables + ipset. A rule
someone else puts in one of our chains reads as ir.Unknown, and the plan replaces the chain."""

from __future__ import annotations

import uuid

import pytest

from policyd.backends import make_backend
from policyd.dataplane import rules as ir
from policyd.dataplane.objects import AddrPort, ChainDef, Hook, IfaceAddr, MapDef, Prefix, Ruleset, SetDef, SetKind, chain_holds
from policyd.dataplane.ops import plan
from policyd.ipt.layout import Names
from policyd.lab.netns import add_namespace, delete_namespaces, entered, sh
from policyd.model.objects import Direction
from policyd.nft.layout import LAYOUT


def every_kind(backend: str) -> Ruleset:
    """Sets of every kind and one chain with a rule of every match kind, verdict and option."""
    lay = LAYOUT if backend == "nftables" else Names("policyd")
    sel = {f: ("sel-" if backend == "nftables" else "policyd-sel-") + "0123456789abcdef" + (f"-v{f}" if backend == "nftables" else f"-{f}")
           for f in (4, 6)}
    np = {f: n.replace("sel-", "np-") for f, n in sel.items()}
    blk = sel[4].replace("sel-", "blk-")
    sets = [SetDef(sel[4], SetKind.ADDR, 4, "", frozenset({"10.0.0.1", "10.0.0.2"})),
            SetDef(sel[6], SetKind.ADDR, 6, "", frozenset({"fd00::1"})),
            SetDef(np[4], SetKind.ADDR_PORT, 4, "", frozenset({AddrPort("10.0.0.1", "tcp", 80), AddrPort("10.0.0.2", "udp", 53)})),
            SetDef(np[6], SetKind.ADDR_PORT, 6, "", frozenset({AddrPort("fd00::1", "tcp", 80)})),
            SetDef(blk, SetKind.PREFIX, 4, "", frozenset({Prefix("10.1.0.0", 16), "10.2.0.1"} | (
                {Prefix("10.1.2.0", 24, True)} if backend == "iptables" else set()))),
            *(SetDef(lay.iface_set(f), SetKind.IFACE, f, "", frozenset({"cali1", "cali2"})) for f in lay.iface_families),
            *(SetDef(lay.addr_set(f), SetKind.IFACE_ADDR, f, "", frozenset({IfaceAddr("cali1", "10.0.0.1" if f == 4 else "fd00::1")}))
              for f in (4, 6)),
            *(SetDef(lay.dns_set(f), SetKind.ADDR, f, "", frozenset({"10.0.0.1" if f == 4 else "fd00::1"})) for f in (4, 6)),
            SetDef(sel[4].replace("sel-", "fq-"), SetKind.ADDR, 4, "", frozenset(), learned=True)]
    target = lay.pod_chain("default/a", Direction.INGRESS, "pass")
    icmp = [ir.Icmp6Types((133, 134, 135, 136))] if backend == "nftables" else [ir.Icmp6Types((t,)) for t in (133, 134, 135, 136)]
    counter = backend == "nftables"
    rules = [
        ir.Rule.build([ir.CtMark(0x02000000)], ir.DROP, "revoked"),
        ir.Rule.build([ir.CtState(("established", "related"))], ir.ACCEPT, "ct"),
        ir.Rule.build([ir.CtState(("invalid",))], ir.DROP, "invalid"),
        *(ir.Rule.build([m], ir.ACCEPT, "nd") for m in icmp),
        ir.Rule.build([ir.IfaceSet(ir.Side.SRC, lay.iface_set(lay.iface_families[0])), ir.IfaceAddrSet(4, lay.addr_set(4), negate=True)], ir.DROP,
                   "spoof4", 4),
        ir.Rule.build([ir.IfaceSet(ir.Side.SRC, lay.iface_set(lay.iface_families[-1])), ir.NetMatch(ir.Side.SRC, 6, "fe80::/10", negate=True),
                    ir.IfaceAddrSet(6, lay.addr_set(6), negate=True)], ir.DROP, "spoof6", 6),
        ir.Rule.build([ir.IfacePrefix(ir.Side.DST, "cali"), ir.IfaceSet(ir.Side.DST, lay.iface_set(lay.iface_families[0]), negate=True)], ir.DROP,
                   "closed", lay.iface_families[0]),
        ir.Rule.build([ir.AddrSet(ir.Side.SRC, 4, sel[4]), ir.L4("tcp", ((80, 80),))], ir.RETURN, "one port", counter=counter),
        ir.Rule.build([ir.AddrSet(ir.Side.DST, 6, sel[6]), ir.L4("udp", ((53, 53), (1000, 1010), (2000, 2000)))], ir.RETURN, "ports"),
        ir.Rule.build([ir.AddrSet(ir.Side.SRC, 4, sel[4]), ir.L4("sctp")], ir.RETURN, "whole protocol"),
        ir.Rule.build([ir.AddrSet(ir.Side.SRC, 4, blk), ir.L4("tcp", ((8000, 9000),))], ir.RETURN, "a range"),
        ir.Rule.build([ir.AddrPortSet(ir.Side.DST, 4, np[4])], ir.RETURN, "named port"),
        ir.Rule.build([ir.AddrPortSet(ir.Side.DST, 6, np[6])], ir.DROP, "named port 6", counter=counter),
        ir.Rule.build([ir.AddrSet(ir.Side.SRC, 4, sel[4])], None, "logged", log=ir.Log(100, 10, 20)),
        ir.Rule.build([ir.L4("tcp", ((22, 22),))], ir.Verdict(ir.Kind.GOTO, target), "goto"),
        ir.Rule.build([], ir.Verdict(ir.Kind.JUMP, target), "jump"),
        ir.Rule.build([ir.AddrSet(ir.Side.DST, 4, sel[4].replace("sel-", "fq-"))], ir.RETURN, "learned"),
        *(ir.Rule.build([ir.CtDirection("reply"), ir.AddrSet(ir.Side.DST, f, lay.dns_set(f)), ir.SrcPort(p, 53)],
                        ir.Verdict(ir.Kind.JUMP, lay.dns_chain()), f"dns {p}", f) for f in (4, 6) for p in ("udp", "tcp")),
        ir.Rule.build([], ir.DROP, "the end " + "x" * 80, counter=counter),
    ]
    chains = [ChainDef.build(lay.pod_chain("default/a", Direction.INGRESS),
                             rules), ChainDef.build(target, [ir.Rule.build([], ir.RETURN, "pass")]),
              ChainDef.build(lay.dns_chain(), [ir.Rule.build([], ir.Verdict(ir.Kind.QUEUE), "queue", queue=ir.Queue(5300, True))])]
    maps = []
    if backend == "nftables":
        maps = [MapDef("pod-egress-if", ir.Side.SRC, 0, (("cali1", chains[0].name),))]
        chains.append(ChainDef.build("forward-hook", [ir.Rule.build([], ir.Verdict(ir.Kind.DISPATCH, "pod-egress-if", ir.Side.SRC, 0), "dispatch")],
                                     Hook("forward")))
    else:
        maps = [MapDef(lay.dispatch_map(Direction.EGRESS, "if"), ir.Side.SRC, 0,
                       (("cali1", chains[0].name),))]
        chains.append(ChainDef.build(lay.base_chain("forward"), [
            ir.Rule.build([], ir.Verdict(ir.Kind.DISPATCH, maps[0].name, ir.Side.SRC, 0), "dispatch"), ir.Rule.build([], ir.RETURN, "end")], Hook("forward")))
    return Ruleset({s.name: s for s in sets}, {m.name: m for m in maps}, {c.name: c for c in chains})


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_the_kernel_lists_back_every_kind_of_rule_we_write(backend):
    prefix = f"pdr{uuid.uuid4().hex[:6]}"
    ns = f"{prefix}-n"
    try:
        add_namespace(ns)
        want = every_kind(backend)
        with entered(ns):
            kernel = make_backend(backend, "policyd")
            kernel.apply(kernel.spell(plan(None, want)))
            got = kernel.read()
        assert got is not None
        for name, c in want.chains.items():
            listed = got.chains[name]
            unknown = [r for r in listed.rules if isinstance(r, ir.Unknown)]
            assert not unknown, f"{backend} lists rules the parser cannot read: {unknown}"
            assert chain_holds(listed, c), (name, listed.rules, c.rules)
        assert got.same_as(want), "every set, map and chain reads back equal"
        assert not plan(got, want), "nothing to do"

        # someone else's rule in our chain: read as ir.Unknown, and the chain is rewritten
        chain = next(n for n in want.chains if "IN-" in n or "pod-in-" in n)
        if backend == "nftables":
            sh("nft", "insert", "rule", "inet", "policyd", chain, "meta", "mark", "1", "accept", ns=ns)
        else:
            sh("iptables-legacy", "-I", chain, "1", "-m", "mark", "--mark", "1", "-j", "ACCEPT", ns=ns)
        with entered(ns):
            got = kernel.read()
            assert got is not None and isinstance(got.chains[chain].rules[0], ir.Unknown)
            p = plan(got, want)
            assert [type(o).__name__ for o in p.ops] == ["FillChain"]
            kernel.apply(kernel.spell(p))
            assert not plan(kernel.read(), want)
    finally:
        delete_namespaces(prefix)
