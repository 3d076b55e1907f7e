"""Typed kernel objects and operations → one libnftables JSON batch (pure).

Every rule, set, map and element is written here and nowhere else; `parse.py` reads the
kernel's listing back into the same types. An in-place chain edit deletes rules by handle:
the handles come from the kernel side (`HandlesOf`, a raw netlink dump of the one chain);
without them the chain is flushed and refilled in the same batch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..dataplane import ops as o
from ..dataplane import rules as ir
from ..dataplane.objects import AddrPort, ChainDef, Elem, Foreign, IfaceAddr, MapDef, Prefix, SetDef, SetKind

ND_NAMES = {135: "nd-neighbor-solicit", 136: "nd-neighbor-advert", 133: "nd-router-solicit", 134: "nd-router-advert"}
ND_ORDER = (135, 136, 133, 134)  # as policyd has always written them
IP = {4: "ip", 6: "ip6"}


@dataclass
class Transaction:
    """One libnftables batch. `ops` counts objects, rules and elements, the unit of kernel work."""

    commands: list[dict[str, Any]] = field(default_factory=list)
    ops: int = 0
    creates_table: bool = False
    # Rules libnftables cannot write (an NFQUEUE verdict, through nft_compat): appended to
    # their chains by a raw netlink batch right after this one (nft/raw.py).
    queue_rules: list[tuple[str, ir.Rule]] = field(default_factory=list)

    def add(self, verb: str, obj: dict[str, Any]) -> None:
        self.commands.append({verb: obj})

    def __bool__(self) -> bool:
        return bool(self.commands or self.queue_rules)

    def to_json(self) -> str:
        return json.dumps({"nftables": [{"metainfo": {"json_schema_version": 1}}, *self.commands]})


# --- rules ------------------------------------------------------------------------------------


def payload(proto: str, fld: str) -> dict[str, Any]:
    return {"payload": {"protocol": proto, "field": fld}}


def match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def iface(side: ir.Side) -> dict[str, Any]:
    return meta("iifname" if side is ir.Side.SRC else "oifname")


def addr(side: ir.Side, family: int) -> dict[str, Any]:
    return payload(IP[family], "saddr" if side is ir.Side.SRC else "daddr")


def ports_json(ports: tuple[tuple[int, int], ...]) -> Any:
    values = [a if a == b else {"range": [a, b]} for a, b in ports]
    return values[0] if len(values) == 1 else {"set": values}


def match_json(m: ir.Match) -> list[dict[str, Any]]:
    if isinstance(m, ir.CtMark):
        return [match({"&": [{"ct": {"key": "mark"}}, m.mark]}, m.mark)]
    if isinstance(m, ir.CtState):
        return [match({"ct": {"key": "state"}}, list(m.states) if len(m.states) > 1 else m.states[0], "in")]
    if isinstance(m, ir.Icmp6Types):
        names = [ND_NAMES.get(t, str(t)) for t in sorted(m.types, key=lambda t: ND_ORDER.index(t) if t in ND_ORDER else t)]
        return [match(meta("l4proto"), "ipv6-icmp"), match(payload("icmpv6", "type"), names[0] if len(names) == 1 else {"set": names})]
    if isinstance(m, ir.IfacePrefix):
        return [match(iface(m.side), m.prefix + "*")]
    if isinstance(m, ir.IfaceSet):
        return [match(iface(m.side), "@" + m.set, "!=" if m.negate else "==")]
    if isinstance(m, ir.NetMatch):
        net, length = m.prefix.split("/")
        return [match(addr(m.side, m.family), {"prefix": {"addr": net, "len": int(length)}}, "!=" if m.negate else "==")]
    if isinstance(m, ir.IfaceAddrSet):
        return [match({"concat": [meta("iifname"), addr(ir.Side.SRC, m.family)]}, "@" + m.set, "!=" if m.negate else "==")]
    if isinstance(m, ir.AddrSet):
        return [match(addr(m.side, m.family), "@" + m.set)]
    if isinstance(m, ir.AddrPortSet):
        return [match({"concat": [addr(m.side, m.family), meta("l4proto"), payload("th", "dport")]}, "@" + m.set)]
    if isinstance(m, ir.CtDirection):
        return [match({"ct": {"key": "direction"}}, m.direction)]
    if isinstance(m, ir.SrcPort):
        return [match(meta("l4proto"), m.proto), match(payload("th", "sport"), m.port)]
    out = [match(meta("l4proto"), m.proto)]
    if m.ports is not None:
        out.append(match(payload("th", "dport"), ports_json(m.ports)))
    return out


def verdict_json(v: ir.Verdict) -> dict[str, Any]:
    if v.kind is ir.Kind.QUEUE:
        raise ValueError("an NFQUEUE verdict is written through nft_compat (nft/raw.py), not libnftables JSON")
    if v.kind in (ir.Kind.JUMP, ir.Kind.GOTO):
        return {v.kind.value: {"target": v.target}}
    if v.kind is ir.Kind.DISPATCH:
        key = iface(v.side or ir.Side.SRC) if v.family == 0 else addr(v.side or ir.Side.SRC, v.family)
        return {"vmap": {"key": key, "data": "@" + v.target}}
    return {v.kind.value: None}


FAMILY_PAYLOADS = (ir.NetMatch, ir.AddrSet, ir.AddrPortSet, ir.Icmp6Types)


def rule_json(r: ir.Rule) -> dict[str, Any]:
    """The rule's `expr` and `comment`. A rule of one family whose first match does not say
    so by itself starts with `meta nfproto` (libnftables lists it without, where a later
    expression implies it)."""
    exprs: list[dict[str, Any]] = []
    if r.family and not (r.matches and isinstance(r.matches[0], FAMILY_PAYLOADS)) and not (
            not r.matches and r.verdict is not None and r.verdict.kind is ir.Kind.DISPATCH and r.verdict.family):
        exprs.append(match(meta("nfproto"), f"ipv{r.family}"))
    for m in r.matches:
        exprs += match_json(m)
    if r.log is not None:
        exprs += [{"limit": {"rate": r.log.rate, "burst": r.log.burst, "per": "second"}},
                  {"log": {"prefix": r.log_prefix, "group": r.log.group}}]
    if r.counter:
        exprs.append({"counter": None})
    if r.verdict is not None:
        exprs.append(verdict_json(r.verdict))
    return {"expr": exprs, "comment": r.tagged_comment}


# --- objects and elements -------------------------------------------------------------------

ADDR_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}


def set_type(s: SetDef) -> list[str]:
    if s.kind is SetKind.IFACE:
        return ["ifname"]
    if s.kind is SetKind.IFACE_ADDR:
        return ["ifname", ADDR_TYPE[s.family]]
    if s.kind is SetKind.ADDR_PORT:
        return [ADDR_TYPE[s.family], "inet_proto", "inet_service"]
    return [ADDR_TYPE[s.family]]


def elem_json(e: Elem) -> Any:
    if isinstance(e, str):
        return e
    if isinstance(e, Prefix):
        return {"prefix": {"addr": e.addr, "len": e.len}}
    if isinstance(e, AddrPort):
        return {"concat": [e.addr, e.proto, e.port]}
    if isinstance(e, IfaceAddr):
        return {"concat": [e.iface, e.addr]}
    if isinstance(e, Foreign):
        return json.loads(e.text)
    raise TypeError(f"not a set element: {e!r}")


def set_json(table: str, s: SetDef) -> dict[str, Any]:
    typ = set_type(s)
    body: dict[str, Any] = {"family": "inet", "table": table, "name": s.name, "type": typ[0] if len(typ) == 1 else typ}
    if s.kind is SetKind.PREFIX:
        body["flags"] = ["interval"]
    if s.learned:
        body["flags"] = ["timeout"]
    if s.comment:
        body["comment"] = s.comment
    return {"set": body}


def map_type(m: MapDef) -> str:
    return "ifname" if m.family == 0 else ADDR_TYPE[m.family]


def map_json(table: str, m: MapDef) -> dict[str, Any]:
    return {"map": {"family": "inet", "table": table, "name": m.name, "type": map_type(m), "map": "verdict"}}


def chain_json(table: str, c: ChainDef) -> dict[str, Any]:
    body: dict[str, Any] = {"family": "inet", "table": table, "name": c.name}
    if c.hook is not None:
        body.update({"type": c.hook.type, "hook": c.hook.hook, "prio": c.hook.priority, "policy": c.hook.policy})
    return {"chain": body}


def elements_json(table: str, name: str, elems: list[Elem]) -> dict[str, Any]:
    return {"element": {"family": "inet", "table": table, "name": name,
                        "elem": [e if type(e) is str else elem_json(e) for e in elems]}}


def map_elements_json(table: str, name: str, entries: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    return {"element": {"family": "inet", "table": table, "name": name,
                        "elem": [[k, {"jump": {"target": c}}] for k, c in entries]}}


def sorted_elems(elems: Any) -> list[Elem]:
    return sorted(elems, key=str)


# --- operations -------------------------------------------------------------------------------

# A chain's rules' handles by rule id, from the kernel (None: not known, the chain is refilled).
HandlesOf = Callable[[str], "dict[str, list[int]] | None"]


def spell(plan: o.Plan, table: str, handles_of: HandlesOf | None = None) -> Transaction:
    tx = Transaction(ops=plan.weight)
    ref = {"family": "inet", "table": table}
    for op in plan.ops:
        if isinstance(op, o.CreateTable):
            tx.creates_table = True
            tx.add("add", {"table": {"family": "inet", "name": table}})
        elif isinstance(op, o.CreateSet):
            tx.add("add", set_json(table, op.set))
            if op.set.elements:
                tx.add("add", elements_json(table, op.set.name, sorted_elems(op.set.elements)))
        elif isinstance(op, o.SetElements):
            _changes(tx, table, "set", op.set.name, op.flush, elements_json(table, op.set.name, sorted_elems(op.removed)),
                     elements_json(table, op.set.name, sorted_elems(op.added)))
        elif isinstance(op, o.DeleteSet):
            tx.add("delete", {"set": {**ref, "name": op.set.name}})
        elif isinstance(op, o.CreateMap):
            tx.add("add", map_json(table, op.map))
        elif isinstance(op, o.MapEntries):
            _changes(tx, table, "map", op.map.name, op.flush, map_elements_json(table, op.map.name, op.removed),
                     map_elements_json(table, op.map.name, op.added))
        elif isinstance(op, o.DeleteMap):
            tx.add("delete", {"map": {**ref, "name": op.map.name}})
        elif isinstance(op, o.CreateChain):
            tx.add("add", chain_json(table, op.chain))
        elif isinstance(op, o.FillChain):
            if op.flush:
                tx.add("flush", {"chain": {**ref, "name": op.chain.name}})
            _fill(tx, table, op.chain)
        elif isinstance(op, o.EditChain):
            _edit(tx, table, op, handles_of)
        elif isinstance(op, o.HookChain):
            tx.add("add", chain_json(table, op.chain))  # (re)declares the hook of an existing chain
        elif isinstance(op, o.FlushChain):
            tx.add("flush", {"chain": {**ref, "name": op.chain.name}})
        elif isinstance(op, o.DeleteChain):
            tx.add("delete", {"chain": {**ref, "name": op.chain.name}})
    return tx


def _changes(tx: Transaction, table: str, kind: str, name: str, flush: bool, removed: dict[str, Any], added: dict[str, Any]) -> None:
    """A set's or map's element changes: flush (when asked), deletes, adds (none when empty)."""
    if flush:
        tx.add("flush", {kind: {"family": "inet", "table": table, "name": name}})
    for verb, elems in (("delete", removed), ("add", added)):
        if elems["element"]["elem"]:
            tx.add(verb, elems)


def _add_rule(tx: Transaction, table: str, chain: str, r: ir.Rule) -> None:
    if r.verdict is not None and r.verdict.kind is ir.Kind.QUEUE:
        tx.queue_rules.append((chain, r))
        return
    tx.add("add", {"rule": {"family": "inet", "table": table, "chain": chain, **rule_json(r)}})


def _fill(tx: Transaction, table: str, chain: ChainDef) -> None:
    for r in chain.rules:
        if isinstance(r, ir.Rule):
            _add_rule(tx, table, chain.name, r)


def _edit(tx: Transaction, table: str, op: o.EditChain, handles_of: HandlesOf | None) -> None:
    """Deletes by handle and appends; a refill when a handle is not known."""
    name = op.chain.name
    known = handles_of(name) if handles_of is not None else None
    handles: list[int] = []
    if known is not None:
        pool = {k: list(v) for k, v in known.items()}
        for rid in op.delete:
            got = pool.get(rid)
            if not got:
                known = None
                break
            handles.append(got.pop(0))
    if known is None:
        tx.add("flush", {"chain": {"family": "inet", "table": table, "name": name}})
        _fill(tx, table, op.chain)
        return
    for h in handles:
        tx.add("delete", {"rule": {"family": "inet", "table": table, "chain": name, "handle": h}})
    for r in op.append:
        _add_rule(tx, table, name, r)
