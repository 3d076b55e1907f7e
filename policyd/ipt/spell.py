"""Typed kernel objects and operations → one iptables/ipset batch (pure).

A batch has three steps, each one call, in an order that never opens or closes a pod by
mistake:

1. `ipset restore`: create new sets (with their elements) and apply element changes, so a
   set is complete before any rule refers to it;
2. `iptables-legacy-restore --noflush` and `ip6tables-legacy-restore --noflush`: declare new
   and changed chains (declaring an existing chain flushes it), refill them (a rule edit is
   spelled as a refill), rewrite changed dispatch chains, hook the base chains in, unhook,
   flush and delete chains. Legacy iptables swaps the whole filter table in at COMMIT, so
   each family changes atomically;
3. `ipset restore`: destroy sets no rule refers to any more.

Rules are written with their matches in the order `iptables-save` lists them, so that
`parse.py` reads back exactly what was written.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from ..dataplane import ops as o
from ..dataplane import rules as ir
from ..dataplane.objects import AddrPort, ChainDef, Elem, Foreign, IfaceAddr, MapDef, Prefix, SetDef, SetKind
from .layout import BUILTIN, ipset_family

FAMILIES = (4, 6)
MAXELEM = 1 << 20  # ipset's default of 65,536 is too small for a cluster-wide selector
HALVES = {4: ("0.0.0.0/1", "128.0.0.0/1"), 6: ("::/1", "8000::/1")}  # hash:net cannot hold a /0
CTSTATE_ORDER = ("INVALID", "NEW", "RELATED", "ESTABLISHED", "UNTRACKED")  # as iptables-save prints them
IPSET_TYPES = {SetKind.ADDR: "hash:ip", SetKind.ADDR_PORT: "hash:ip,port", SetKind.PREFIX: "hash:net",
               SetKind.IFACE: "hash:net,iface", SetKind.IFACE_ADDR: "hash:net,iface"}


@dataclass
class IptTransaction:
    ipset_before: list[str] = field(default_factory=list)
    rules: dict[int, list[str]] = field(default_factory=lambda: {4: [], 6: []})
    ipset_after: list[str] = field(default_factory=list)
    ops: int = 0

    def __bool__(self) -> bool:
        return bool(self.ipset_before or self.rules[4] or self.rules[6] or self.ipset_after)

    def restore_text(self, family: int) -> str:
        """The `iptables-restore --noflush` input for one family ('' when it has nothing)."""
        lines = self.rules[family]
        return "*filter\n" + "\n".join(lines) + "\nCOMMIT\n" if lines else ""

    def text(self) -> str:
        """Everything, for humans (`policyd render --backend iptables`)."""
        parts = []
        if self.ipset_before:
            parts.append("# ipset restore\n" + "\n".join(self.ipset_before) + "\n")
        for fam in FAMILIES:
            if self.rules[fam]:
                parts.append(f"# {'ip6tables' if fam == 6 else 'iptables'}-legacy-restore --noflush\n" + self.restore_text(fam))
        if self.ipset_after:
            parts.append("# ipset restore\n" + "\n".join(self.ipset_after) + "\n")
        return "\n".join(parts)


# --- rules ------------------------------------------------------------------------------------


def ports_text(ports: tuple[tuple[int, int], ...]) -> str:
    return ",".join(str(a) if a == b else f"{a}:{b}" for a, b in ports)


def rule_args(r: ir.Rule) -> str:
    """A rule's matches, comment and target, in iptables-save's order: addresses,
    interfaces and the protocol first, then the match modules."""
    head: list[str] = []
    ports: list[str] = []  # the protocol's module first, as policyd has always written it
    mods: list[str] = []
    for m in r.matches:
        if isinstance(m, ir.NetMatch):
            head.append(f"{'! ' if m.negate else ''}-{'s' if m.side is ir.Side.SRC else 'd'} {m.prefix}")
        elif isinstance(m, ir.IfacePrefix):
            head.append(f"-{'i' if m.side is ir.Side.SRC else 'o'} {m.prefix}+")
        elif isinstance(m, ir.L4):
            head.append(f"-p {m.proto}")
            if m.ports is not None:
                ports.append(f"-m {m.proto} --dport {ports_text(m.ports)}" if len(m.ports) == 1
                             else f"-m multiport --dports {ports_text(m.ports)}")
        elif isinstance(m, ir.Icmp6Types):
            head.append("-p ipv6-icmp")
            ports += [f"-m icmp6 --icmpv6-type {t}" for t in m.types]
        elif isinstance(m, ir.SrcPort):
            head.append(f"-p {m.proto}")
            ports.append(f"-m {m.proto} --sport {m.port}")
        elif isinstance(m, ir.CtDirection):
            mods.append(f"-m conntrack --ctdir {m.direction.upper()}")
        elif isinstance(m, ir.CtMark):
            mods.append(f"-m connmark --mark {m.mark:#x}/{m.mark:#x}")
        elif isinstance(m, ir.CtState):
            states = sorted((s.upper() for s in m.states), key=lambda s: CTSTATE_ORDER.index(s) if s in CTSTATE_ORDER else 99)
            mods.append(f"-m conntrack --ctstate {','.join(states)}")
        elif isinstance(m, ir.IfaceSet):
            side = m.side.value
            mods.append(f"-m set {'! ' if m.negate else ''}--match-set {m.set} {side},{side}")
        elif isinstance(m, ir.IfaceAddrSet):
            mods.append(f"-m set {'! ' if m.negate else ''}--match-set {m.set} src,src")
        elif isinstance(m, ir.AddrSet):
            mods.append(f"-m set --match-set {m.set} {m.side.value}")
        elif isinstance(m, ir.AddrPortSet):
            mods.append(f"-m set --match-set {m.set} {m.side.value},{m.side.value}")
    if r.log is not None:
        mods.append(f"-m limit --limit {r.log.rate}/sec --limit-burst {r.log.burst}")
    mods.append(f'-m comment --comment "{r.tagged_comment}"')
    v = r.verdict
    if r.log is not None and v is not None:
        raise ValueError("an iptables rule either logs (NFLOG) or decides, not both: the renderer writes two rules")
    if v is None:
        target = f"-j NFLOG --nflog-prefix {r.log_prefix} --nflog-group {r.log.group if r.log else 0}"
    elif v.kind is ir.Kind.GOTO:
        target = f"-g {v.target}"
    elif v.kind is ir.Kind.QUEUE:
        q = r.queue or ir.Queue(0, False)
        target = f"-j NFQUEUE --queue-num {q.num}" + (" --queue-bypass" if q.bypass else "")
    elif v.kind in (ir.Kind.JUMP, ir.Kind.DISPATCH):
        target = f"-j {v.target}"
    else:
        target = f"-j {v.kind.value.upper()}"
    return " ".join([*head, *ports, *mods, target])


def chain_lines(name: str, rules: tuple[ir.AnyRule, ...], family: int) -> list[str]:
    return [f"-A {name} {rule_args(r)}" for r in rules if isinstance(r, ir.Rule) and r.family in (0, family)]


def dispatch_lines(m: MapDef) -> list[str]:
    """A dispatch map as its chain's rules."""
    if m.family == 0:
        opt = "-i" if m.side is ir.Side.SRC else "-o"
    else:
        opt = "-s" if m.side is ir.Side.SRC else "-d"
    return [f"-A {m.name} {opt} {key} -j {chain}" for key, chain in m.elements]


def map_families(m: MapDef) -> tuple[int, ...]:
    return (m.family,) if m.family in FAMILIES else FAMILIES


# --- elements -------------------------------------------------------------------------------


def entries(e: Elem, family: int) -> list[str]:
    """One set element as ipset entries (an interface: two halves, as hash:net,iface cannot
    hold a /0)."""
    if isinstance(e, str):
        return [e]
    if isinstance(e, Prefix):
        net = f"{e.addr}/{e.len}" if e.len != (32 if family == 4 else 128) else e.addr
        return [f"{net} nomatch" if e.nomatch else net]
    if isinstance(e, AddrPort):
        return [f"{e.addr},{e.proto}:{e.port}"]
    if isinstance(e, IfaceAddr):
        return [f"{e.addr},{e.iface}"]
    if isinstance(e, Foreign):
        return [e.text]
    raise TypeError(f"not a set element: {e!r}")


def set_entries(s: SetDef, elems: AbstractSet[Elem]) -> list[str]:
    if s.kind in (SetKind.ADDR, SetKind.PREFIX) and all(type(e) is str for e in elems):
        return sorted(e for e in elems if type(e) is str)  # (addresses: the common case, 100k of them)
    out: list[str] = []
    for e in sorted(elems, key=str):
        if s.kind is SetKind.IFACE and isinstance(e, str):
            out += [f"{half},{e}" for half in HALVES[s.family]]
        else:
            out += entries(e, s.family)
    return out


# --- operations -------------------------------------------------------------------------------


def spell(plan: o.Plan) -> IptTransaction:
    tx = IptTransaction(ops=plan.weight)
    before, after = tx.ipset_before, tx.ipset_after
    declare: dict[int, list[str]] = {4: [], 6: []}
    fill: dict[int, list[str]] = {4: [], 6: []}
    hooks: dict[int, list[str]] = {4: [], 6: []}
    drop: dict[int, list[str]] = {4: [], 6: []}
    declared: dict[int, set[str]] = {4: set(), 6: set()}
    created_sets = {op.set.name for op in plan.ops if isinstance(op, o.CreateSet)}

    def declare_in(name: str, families: tuple[int, ...]) -> None:
        for fam in families:
            if name not in declared[fam]:
                declared[fam].add(name)
                declare[fam].append(f":{name} - [0:0]")

    def refill(c: ChainDef) -> None:
        declare_in(c.name, FAMILIES)
        for fam in FAMILIES:
            fill[fam] += chain_lines(c.name, c.rules, fam)

    for op in plan.ops:
        if isinstance(op, o.CreateSet):
            s = op.set
            timeout = " timeout 0" if s.learned else ""  # (each learned element has its own)
            before.append(f"create {s.name} {IPSET_TYPES[s.kind]} family {ipset_family(s.family)}{timeout} maxelem {MAXELEM}")
            before += [f"add {s.name} {e}" for e in set_entries(s, s.elements)]
        elif isinstance(op, o.SetElements):
            s = op.set
            if op.flush:
                before.append(f"flush {s.name}")
            before += [f"del {s.name} {e.removesuffix(' nomatch')}" for e in set_entries(s, op.removed)]
            before += [f"add {s.name} {e}" for e in set_entries(s, op.added)]
        elif isinstance(op, o.DeleteSet):
            (before if op.set.name in created_sets else after).append(f"destroy {op.set.name}")
        elif isinstance(op, o.CreateMap):
            declare_in(op.map.name, map_families(op.map))
        elif isinstance(op, o.MapEntries):
            declare_in(op.map.name, map_families(op.map))
            for fam in map_families(op.map):
                fill[fam] += dispatch_lines(op.map)
        elif isinstance(op, o.DeleteMap):
            declare_in(op.map.name, map_families(op.map))
            for fam in map_families(op.map):
                drop[fam].append(f"-X {op.map.name}")
        elif isinstance(op, o.CreateChain):
            declare_in(op.chain.name, FAMILIES)
            if op.chain.hook is not None:
                for fam in FAMILIES:
                    hooks[fam].append(f"-I {BUILTIN[op.chain.hook.hook]} 1 -j {op.chain.name}")
        elif isinstance(op, (o.FillChain, o.EditChain)):
            refill(op.chain)
        elif isinstance(op, o.HookChain):
            if op.chain.hook is not None:
                builtin = BUILTIN[op.chain.hook.hook]
                for fam in op.stray:  # (one line per jump: -D deletes one)
                    hooks[fam].append(f"-D {builtin} -j {op.chain.name}")
                for fam in op.families:
                    hooks[fam].append(f"-I {builtin} 1 -j {op.chain.name}")
        elif isinstance(op, o.FlushChain):
            c = op.chain
            for fam in FAMILIES:
                if c.hook is not None and (c.hooked_families is None or fam in c.hooked_families):
                    drop[fam].append(f"-D {BUILTIN[c.hook.hook]} -j {c.name}")
                if c.hook is not None:
                    drop[fam] += [f"-D {BUILTIN[c.hook.hook]} -j {c.name}" for f in c.stray_hooks if f == fam]
            declare_in(c.name, FAMILIES)
        elif isinstance(op, o.DeleteChain):
            declare_in(op.chain.name, FAMILIES)  # (declaring makes it where a family lacks it: -X cannot fail)
            for fam in FAMILIES:
                drop[fam].append(f"-X {op.chain.name}")
    for fam in FAMILIES:
        tx.rules[fam] = declare[fam] + fill[fam] + hooks[fam] + drop[fam]
    return tx
