"""libnftables' JSON listing → the typed objects of `dataplane` (pure, total).

Rules are read in the forms libnftables 1.0.6 lists them (it folds away what it can imply:
`meta nfproto ipv4` before an `ip` payload, `meta l4proto tcp` before `th dport`, which it
lists as `tcp dport`, `meta l4proto ipv6-icmp` before `icmpv6 type`) and in the forms
`spell.py` writes them. Whatever is not one of the shapes policyd writes — in a rule, a set
element, a map entry — comes back as something no desired object equals (`rules.Unknown`,
`objects.Foreign`, `objects.FOREIGN_TARGET`), never as an exception, so the next sync
repairs it.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from ..dataplane import rules as ir
from ..dataplane.objects import (
    FOREIGN_TARGET,
    AddrPort,
    ChainDef,
    Elem,
    Foreign,
    Hook,
    IfaceAddr,
    MapDef,
    Prefix,
    Ruleset,
    SetDef,
    SetKind,
)
from .spell import ND_NAMES

ND_TYPES = {name: t for t, name in ND_NAMES.items()}
FAMILY_OF = {"ip": 4, "ip6": 6}
L4_PROTOS = ("tcp", "udp", "sctp")


class Unreadable(Exception):
    """A shape policyd never writes (caught here: the thing becomes foreign)."""


# --- rules ------------------------------------------------------------------------------------


def _meta(x: Any) -> str | None:
    if isinstance(x, dict) and isinstance(x.get("meta"), dict):
        key = x["meta"].get("key")
        return key if isinstance(key, str) else None
    return None


def _payload(x: Any) -> tuple[str, str] | None:
    if isinstance(x, dict) and isinstance(x.get("payload"), dict):
        p = x["payload"]
        if isinstance(p.get("protocol"), str) and isinstance(p.get("field"), str):
            return p["protocol"], p["field"]
    return None


def _addr(x: Any) -> tuple[ir.Side, int]:
    """`ip saddr` → (SRC, 4)."""
    p = _payload(x)
    if p is None or p[0] not in FAMILY_OF or p[1] not in ("saddr", "daddr"):
        raise Unreadable
    return (ir.Side.SRC if p[1] == "saddr" else ir.Side.DST), FAMILY_OF[p[0]]


def _set_ref(right: Any) -> str:
    if isinstance(right, str) and right.startswith("@") and len(right) > 1:
        return right[1:]
    raise Unreadable


def _port(v: Any) -> tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        return v, v
    if isinstance(v, dict) and isinstance(v.get("range"), list) and len(v["range"]) == 2 and all(
            isinstance(x, int) and not isinstance(x, bool) for x in v["range"]):
        return v["range"][0], v["range"][1]
    raise Unreadable


def _ports(right: Any) -> tuple[tuple[int, int], ...]:
    if isinstance(right, dict) and isinstance(right.get("set"), list):
        return tuple(sorted(_port(v) for v in right["set"]))
    return (_port(right),)


def _iface_side(key: str | None) -> ir.Side:
    if key == "iifname":
        return ir.Side.SRC
    if key == "oifname":
        return ir.Side.DST
    raise Unreadable


def _match(m: Any, out: list[ir.Match], state: dict[str, Any]) -> None:
    """One `match` expression into `out` (`state` carries a pending `meta l4proto` and the
    family `meta nfproto` names)."""
    if not isinstance(m, dict):
        raise Unreadable
    op, left, right = m.get("op"), m.get("left"), m.get("right")
    if op not in ("==", "!=", "in"):
        raise Unreadable
    negate = op == "!="
    key = _meta(left)
    pay = _payload(left)
    mark = left.get("&") if isinstance(left, dict) else None
    if (isinstance(mark, list) and len(mark) == 2 and mark[0] == {"ct": {"key": "mark"}} and isinstance(mark[1], int)
            and not isinstance(mark[1], bool) and mark[1] == right and op == "=="):
        out.append(ir.CtMark(mark[1]))
    elif isinstance(left, dict) and isinstance(left.get("ct"), dict) and left["ct"].get("key") == "direction" and op == "==":
        if right not in ("reply", "original"):
            raise Unreadable
        out.append(ir.CtDirection(right))
    elif isinstance(left, dict) and isinstance(left.get("ct"), dict) and left["ct"].get("key") == "state" and not negate:
        states = [s for s in (right if isinstance(right, list) else [right]) if isinstance(s, str)]
        if not states or len(states) != (len(right) if isinstance(right, list) else 1):
            raise Unreadable
        out.append(ir.CtState(tuple(sorted(states))))
    elif key == "nfproto" and not negate:
        if right not in ("ipv4", "ipv6") or state.get("family"):
            raise Unreadable
        state["family"] = 4 if right == "ipv4" else 6
    elif key == "l4proto" and not negate:
        if state.get("l4") is not None or not isinstance(right, str):
            raise Unreadable
        state["l4"] = right
    elif key in ("iifname", "oifname"):
        side = _iface_side(key)
        if isinstance(right, str) and right.startswith("@"):
            out.append(ir.IfaceSet(side, _set_ref(right), negate))
        elif isinstance(right, str) and right.endswith("*") and len(right) > 1 and not negate:
            out.append(ir.IfacePrefix(side, right[:-1]))
        else:
            raise Unreadable
    elif pay is not None and pay == ("icmpv6", "type") and not negate:
        if state.pop("l4", "ipv6-icmp") != "ipv6-icmp":
            raise Unreadable
        given = right["set"] if isinstance(right, dict) and isinstance(right.get("set"), list) else [right]
        types = [ND_TYPES[n] for n in given if isinstance(n, str) and n in ND_TYPES]
        if not types or len(types) != len(given):
            raise Unreadable
        out.append(ir.Icmp6Types(tuple(sorted(types))))
    elif pay is not None and pay[1] == "sport" and pay[0] in ("th", *L4_PROTOS) and op == "==":
        pending = state.pop("l4", None)
        proto = pending if pay[0] == "th" else pay[0]
        if (pay[0] != "th" and pending not in (None, pay[0])) or proto not in L4_PROTOS or not isinstance(right, int) \
                or isinstance(right, bool):
            raise Unreadable
        out.append(ir.SrcPort(proto, right))
    elif pay is not None and pay[1] == "dport" and pay[0] in ("th", *L4_PROTOS) and not negate:
        pending = state.pop("l4", None)
        if pay[0] != "th" and pending not in (None, pay[0]):
            raise Unreadable
        proto = pending if pay[0] == "th" else pay[0]
        if proto not in L4_PROTOS:
            raise Unreadable
        out.append(ir.L4(proto, _ports(right)))
    elif pay is not None:
        side, fam = _addr(left)
        if isinstance(right, dict) and isinstance(right.get("prefix"), dict):
            p = right["prefix"]
            out.append(ir.NetMatch(side, fam, str(ipaddress.ip_network(f"{p.get('addr')}/{p.get('len')}")), negate))
        elif not negate:
            out.append(ir.AddrSet(side, fam, _set_ref(right)))
        else:
            raise Unreadable
    elif isinstance(left, dict) and isinstance(left.get("concat"), list):
        parts = left["concat"]
        if len(parts) == 2 and _meta(parts[0]) == "iifname":
            side, fam = _addr(parts[1])
            if side is not ir.Side.SRC:
                raise Unreadable
            out.append(ir.IfaceAddrSet(fam, _set_ref(right), negate))
        elif len(parts) == 3 and _meta(parts[1]) == "l4proto" and _payload(parts[2]) == ("th", "dport") and not negate:
            side, fam = _addr(parts[0])
            out.append(ir.AddrPortSet(side, fam, _set_ref(right)))
        else:
            raise Unreadable
    else:
        raise Unreadable


def _verdict(e: dict[str, Any]) -> ir.Verdict | None:
    """A verdict expression; None when `e` is not one."""
    (kind, body), = e.items()
    if kind in ("accept", "drop", "return"):
        return ir.Verdict(ir.Kind(kind))
    if kind == "xt" and isinstance(body, dict) and body.get("type") == "target" and body.get("name") == "NFQUEUE":
        return ir.Verdict(ir.Kind.QUEUE)  # (nft lists no options of an xtables target: see rules.Rule.queue)
    if kind in ("jump", "goto"):
        if isinstance(body, dict) and isinstance(body.get("target"), str):
            return ir.Verdict(ir.Kind(kind), body["target"])
        raise Unreadable
    if kind == "vmap":
        if not isinstance(body, dict):
            raise Unreadable
        target = _set_ref(body.get("data"))
        key = body.get("key")
        if _meta(key) in ("iifname", "oifname"):
            return ir.Verdict(ir.Kind.DISPATCH, target, _iface_side(_meta(key)), 0)
        side, fam = _addr(key)
        return ir.Verdict(ir.Kind.DISPATCH, target, side, fam)
    return None


PARSED_KEPT = 50_000  # rules remembered with what they parse to (a listing repeats them)
_parsed: dict[str, ir.AnyRule] = {}


def parse_rule(body: dict[str, Any]) -> ir.AnyRule:
    """One listed rule (`expr`, `comment`) → a Rule, or Unknown. Remembered by its text
    (counters blanked): a listing of 12,000 rules parses only the rules that changed."""
    exprs = body.get("expr")
    if isinstance(exprs, list) and any(isinstance(e, dict) and isinstance(e.get("counter"), dict) for e in exprs):
        exprs = [{"counter": None} if isinstance(e, dict) and "counter" in e else e for e in exprs]
    key = json.dumps([exprs, body.get("comment")], sort_keys=True, default=str)
    got = _parsed.get(key)
    if got is None:
        try:
            got = _parse_rule({"expr": exprs, "comment": body.get("comment", "")})
        except (Unreadable, KeyError, TypeError, ValueError, AttributeError):
            got = ir.Unknown(key)
        if len(_parsed) >= PARSED_KEPT:
            _parsed.clear()
        _parsed[key] = got
    return got


def _parse_rule(body: dict[str, Any]) -> ir.Rule:
    exprs = body.get("expr", [])
    comment = body.get("comment", "")
    if not isinstance(exprs, list) or not isinstance(comment, str):
        raise Unreadable
    text, rid = ir.split_comment(comment)
    matches: list[ir.Match] = []
    state: dict[str, Any] = {}
    log: ir.Log | None = None
    counter = False
    verdict: ir.Verdict | None = None
    i = 0
    while i < len(exprs):
        e = exprs[i]
        if not isinstance(e, dict) or len(e) != 1 or verdict is not None:
            raise Unreadable
        (kind, val), = e.items()
        if kind == "match":
            _match(val, matches, state)
        elif kind == "counter" and not counter:
            counter = True
        elif kind == "limit" and log is None and i + 1 < len(exprs) and isinstance(exprs[i + 1], dict) and "log" in exprs[i + 1]:
            lim, lg = val, exprs[i + 1]["log"]
            if not isinstance(lim, dict) or not isinstance(lg, dict) or lim.get("per") != "second" or lg.get("prefix") != ir.LOG_PREFIX + rid:
                raise Unreadable
            rate, burst, group = lim.get("rate"), lim.get("burst", 5), lg.get("group")
            if not (isinstance(rate, int) and isinstance(burst, int) and isinstance(group, int)) \
                    or any(isinstance(x, bool) for x in (rate, burst, group)):
                raise Unreadable
            log = ir.Log(group, rate, burst)
            i += 1
        else:
            verdict = _verdict(e)
            if verdict is None:
                raise Unreadable
        i += 1
    if state.get("l4") is not None:  # `meta l4proto X` without ports
        if state["l4"] not in L4_PROTOS:
            raise Unreadable
        matches.append(ir.L4(state.pop("l4")))
    ms = ir.ordered(matches)
    family = ir.implied_family(ms) or (verdict.family if verdict is not None and verdict.kind is ir.Kind.DISPATCH else 0)
    if state.get("family") and family and state["family"] != family:
        raise Unreadable
    return ir.Rule(ms, verdict, family or state.get("family", 0), log, counter, text, rid)


# --- sets, maps, chains -----------------------------------------------------------------------

NFT_KINDS = {
    ("ipv4_addr",): (SetKind.ADDR, 4), ("ipv6_addr",): (SetKind.ADDR, 6), ("ifname",): (SetKind.IFACE, 0),
    ("ifname", "ipv4_addr"): (SetKind.IFACE_ADDR, 4), ("ifname", "ipv6_addr"): (SetKind.IFACE_ADDR, 6),
    ("ipv4_addr", "inet_proto", "inet_service"): (SetKind.ADDR_PORT, 4),
    ("ipv6_addr", "inet_proto", "inet_service"): (SetKind.ADDR_PORT, 6),
}


PLAIN = frozenset({SetKind.ADDR, SetKind.IFACE, SetKind.PREFIX})  # sets whose elements may be bare strings


def elements_from_json(elems: list[Any], kind: SetKind) -> frozenset[Elem]:
    """A set's listed elements (100k addresses: the bare strings pass as they are)."""
    if kind in PLAIN:
        return frozenset(e if type(e) is str else elem_from_json(e, kind) for e in elems)
    return frozenset(elem_from_json(e, kind) for e in elems)


def elem_from_json(j: Any, kind: SetKind) -> Elem:
    """A listed set element; one of a shape policyd never writes (a foreign one) comes back
    as Foreign rather than raising."""
    raw = j
    if isinstance(j, dict) and isinstance(j.get("elem"), dict) and "val" in j["elem"]:  # with options (comment, timeout)
        j = j["elem"]["val"]
    if isinstance(j, str) and kind in (SetKind.ADDR, SetKind.IFACE, SetKind.PREFIX):
        return j
    if isinstance(j, dict) and len(j) == 1:
        (k, v), = j.items()
        if k == "prefix" and kind is SetKind.PREFIX and isinstance(v, dict) and isinstance(v.get("addr"), str) \
                and isinstance(v.get("len"), int) and not isinstance(v.get("len"), bool):
            return Prefix(v["addr"], v["len"])
        if k == "concat" and isinstance(v, list):
            if kind is SetKind.ADDR_PORT and len(v) == 3 and isinstance(v[0], str) and isinstance(v[1], str) \
                    and isinstance(v[2], int) and not isinstance(v[2], bool):
                return AddrPort(v[0], v[1], v[2])
            if kind is SetKind.IFACE_ADDR and len(v) == 2 and all(isinstance(x, str) for x in v):
                return IfaceAddr(v[0], v[1])
    return Foreign(json.dumps(raw, sort_keys=True, default=str))


def map_entry_from_json(j: Any) -> tuple[str, str]:
    """A verdict map's entry as listed, (key, chain jumped to); an entry policyd never writes
    (another verdict, an unreadable key) has FOREIGN_TARGET for its chain."""
    if not isinstance(j, list) or len(j) != 2:
        return json.dumps(j, sort_keys=True, default=str), FOREIGN_TARGET
    key, verdict = elem_from_json(j[0], SetKind.ADDR), j[1]
    jump = verdict.get("jump") if isinstance(verdict, dict) and len(verdict) == 1 else None
    target = jump.get("target") if isinstance(jump, dict) else None
    if not isinstance(key, str):
        return json.dumps(j, sort_keys=True, default=str), FOREIGN_TARGET
    return key, target if isinstance(target, str) and target else FOREIGN_TARGET


def _list(x: Any) -> list[Any]:
    return x if isinstance(x, list) else [x]


def parse_listing(doc: Any, table: str) -> Ruleset:
    """A JSON listing (of the table or the whole ruleset) → our table's Ruleset, chains with
    their rules as listed. Total (see the module's docstring)."""
    rs = Ruleset()
    rules: dict[str, list[ir.AnyRule]] = {}
    hooks: dict[str, Hook | None] = {}
    items = doc.get("nftables", []) if isinstance(doc, dict) else []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict) or len(item) != 1:
            continue
        (kind, body), = item.items()
        if not isinstance(body, dict) or body.get("family") != "inet" or body.get("table") != table:
            continue  # metainfo, table headers, other tables
        name = body.get("name") if kind != "rule" else body.get("chain")
        if not isinstance(name, str):
            continue
        if kind == "set":
            typ = tuple(str(t) for t in _list(body.get("type")))
            flags = body.get("flags", [])
            interval = isinstance(flags, list) and "interval" in flags
            learned = isinstance(flags, list) and flags == ["timeout"]
            skind, fam = NFT_KINDS.get(typ, (None, 0))
            if skind is SetKind.ADDR and interval:
                skind = SetKind.PREFIX
            elif learned and skind is not SetKind.ADDR:
                skind = None
            elif not learned and (interval or (isinstance(flags, list) and [f for f in flags if f != "interval"])):
                skind = None  # a set of ours re-made with other flags
            comment = body.get("comment", "")
            if skind is None:  # a type policyd never makes: differs from any desired header
                rs.sets[name] = SetDef(name, SetKind.ADDR, -1, comment if isinstance(comment, str) else "")
                continue
            rs.sets[name] = SetDef(name, skind, fam, comment if isinstance(comment, str) else "",
                                   elements_from_json(_list(body.get("elem", [])), skind) if not learned else frozenset(), learned)
        elif kind == "map":
            key_type = body.get("type")
            fam = {"ifname": 0, "ipv4_addr": 4, "ipv6_addr": 6}.get(key_type if isinstance(key_type, str) else "", -1)
            entries = tuple(sorted(map_entry_from_json(e) for e in _list(body.get("elem", []))))
            if body.get("map") != "verdict":
                fam = -1
            rs.maps[name] = MapDef(name, ir.Side.SRC, fam, entries)
        elif kind == "chain":
            hooks[name] = _hook(body)
            rules.setdefault(name, [])
        elif kind == "rule":
            rules.setdefault(name, []).append(parse_rule(body))
    for name, hook in hooks.items():
        rs.chains[name] = ChainDef.read(name, rules.get(name, ()), hook)
    return rs


def _hook(body: dict[str, Any]) -> Hook | None:
    if "hook" not in body:
        return None
    prio, policy, typ = body.get("prio", 0), body.get("policy", "accept"), body.get("type", "filter")
    return Hook(str(body["hook"]), prio if isinstance(prio, int) and not isinstance(prio, bool) else -1,
                policy if isinstance(policy, str) else "?", typ if isinstance(typ, str) else "?")


def rule_counters(doc: Any, table: str) -> list[tuple[str, str, int, int]]:
    """(chain, rule id, packets, bytes) of every rule of our table with a counter, from a listing."""
    out = []
    items = doc.get("nftables", []) if isinstance(doc, dict) else []
    for item in items if isinstance(items, list) else []:
        body = item.get("rule") if isinstance(item, dict) else None
        if not isinstance(body, dict) or body.get("family") != "inet" or body.get("table") != table:
            continue
        for e in _list(body.get("expr", [])):
            c = e.get("counter") if isinstance(e, dict) else None
            if isinstance(c, dict):
                _, rid = ir.split_comment(str(body.get("comment", "")))
                out.append((str(body.get("chain", "")), rid, int(c.get("packets", 0)), int(c.get("bytes", 0))))
    return out
