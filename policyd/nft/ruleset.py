"""nftables JSON for the dataplane objects (`dataplane.objects`), and reading it back."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..dataplane.objects import COMMENT_MAX, DIGEST_RE, FOREIGN_ELEM, FOREIGN_TARGET, ChainDef, Elem, Hook, MapDef, Ruleset, SetDef

# --- JSON encoding ------------------------------------------------------------------------


def elem_json(e: Elem) -> Any:
    if isinstance(e, str):
        return e
    if e[0] == "prefix":
        return {"prefix": {"addr": e[1], "len": e[2]}}
    if e[0] == "range":
        return {"range": [e[1], e[2]]}
    return {"concat": list(e[1:])}


def elem_from_json(j: Any) -> Elem:
    """A set element as listed; one of a shape policyd never writes (a foreign one) comes back
    as ("foreign", its JSON) rather than raising (see objects.FOREIGN_ELEM)."""
    if isinstance(j, dict) and isinstance(j.get("elem"), dict) and "val" in j["elem"]:  # with options (comment, timeout)
        j = j["elem"]["val"]
    if isinstance(j, (str, int)) and not isinstance(j, bool):
        return str(j)
    if isinstance(j, dict) and len(j) == 1:
        (kind, v), = j.items()
        if kind == "prefix" and isinstance(v, dict) and isinstance(v.get("addr"), str) and isinstance(v.get("len"), int):
            return ("prefix", v["addr"], v["len"])
        if kind in ("range", "concat") and isinstance(v, list) and all(isinstance(x, (str, int)) for x in v):
            return (kind, *v)
    return (FOREIGN_ELEM, json.dumps(j, sort_keys=True))


def map_entry_from_json(j: Any) -> tuple[str, str]:
    """A verdict map's entry as listed, (key, chain jumped to); an entry policyd never writes
    (another verdict, an unreadable key) has FOREIGN_TARGET for its chain."""
    if not isinstance(j, list) or len(j) != 2:
        return json.dumps(j, sort_keys=True), FOREIGN_TARGET
    key, verdict = elem_from_json(j[0]), j[1]
    target = verdict.get("jump", {}).get("target") if isinstance(verdict, dict) and len(verdict) == 1 \
        and isinstance(verdict.get("jump"), dict) else None
    if not isinstance(key, str):
        return json.dumps(j, sort_keys=True), FOREIGN_TARGET
    return key, target if isinstance(target, str) and target else FOREIGN_TARGET


def set_json(table: str, s: SetDef) -> dict[str, Any]:
    body: dict[str, Any] = {"family": "inet", "table": table, "name": s.name, "type": s.type[0] if len(s.type) == 1 else list(s.type)}
    if s.interval:
        body["flags"] = ["interval"]
    if s.comment:
        body["comment"] = s.comment[:COMMENT_MAX]
    return {"set": body}


def map_json(table: str, m: MapDef) -> dict[str, Any]:
    return {"map": {"family": "inet", "table": table, "name": m.name, "type": m.type, "map": "verdict"}}


def chain_json(table: str, c: ChainDef) -> dict[str, Any]:
    body: dict[str, Any] = {"family": "inet", "table": table, "name": c.name}
    if c.hook is not None:
        body.update({"type": "filter", "hook": c.hook.hook, "prio": c.hook.priority, "policy": "accept"})
    return {"chain": body}


def rule_json(table: str, chain: str, rule: Mapping[str, Any]) -> dict[str, Any]:
    return {"rule": {"family": "inet", "table": table, "chain": chain, **rule}}


def elements_json(table: str, name: str, elems: list[Elem]) -> dict[str, Any]:
    return {"element": {"family": "inet", "table": table, "name": name, "elem": [elem_json(e) for e in elems]}}


def map_elements_json(table: str, name: str, elems: list[tuple[str, str]]) -> dict[str, Any]:
    return {"element": {"family": "inet", "table": table, "name": name, "elem": [[k, {"jump": {"target": c}}] for k, c in elems]}}


# --- the kernel's normal form of a rule --------------------------------------------------


def _sorted_sets(x: Any) -> Any:
    """Anonymous sets in a fixed order (the kernel lists them sorted by value)."""
    if isinstance(x, dict):
        out = {k: _sorted_sets(v) for k, v in x.items()}
        if isinstance(out.get("set"), list):
            out["set"] = sorted(out["set"], key=lambda e: json.dumps(e, sort_keys=True))
        return out
    if isinstance(x, list):
        return [_sorted_sets(v) for v in x]
    return x


def _payload_protocols(x: Any) -> set[str]:
    if isinstance(x, dict):
        found = {x["payload"]["protocol"]} if isinstance(x.get("payload"), dict) and "protocol" in x["payload"] else set()
        return found.union(*(_payload_protocols(v) for v in x.values()))
    if isinstance(x, list):
        return set().union(*(_payload_protocols(v) for v in x))
    return set()


def _meta_match(e: dict[str, Any], key: str) -> Any:
    m = e.get("match")
    if isinstance(m, dict) and m.get("op") == "==" and m.get("left") == {"meta": {"key": key}}:
        return m.get("right")
    return None


def canonical_rule(rule: Mapping[str, Any]) -> tuple[str, str]:
    """A rule as libnftables lists it back, for comparing what we want with what the kernel
    holds: the dependencies libnftables folds away are folded here too (`meta nfproto ipv4`
    implied by an `ip` payload, `meta l4proto tcp` + `th dport` listed as `tcp dport`,
    `meta l4proto ipv6-icmp` implied by `icmpv6 type`), sets sorted. Kernel tests hold this
    to the kernel: a table read back right after it was written shows no drift."""
    exprs = list(rule.get("expr", []))
    out: list[Any] = []
    for i, e in enumerate(exprs):
        later = _payload_protocols(exprs[i + 1:])
        nfproto = _meta_match(e, "nfproto")
        if (nfproto == "ipv4" and "ip" in later) or (nfproto == "ipv6" and "ip6" in later):
            continue
        l4 = _meta_match(e, "l4proto")
        nxt = exprs[i + 1] if i + 1 < len(exprs) else None
        left = nxt.get("match", {}).get("left", {}) if isinstance(nxt, dict) else {}
        payload = left.get("payload") if isinstance(left, dict) else None
        if l4 is not None and isinstance(payload, dict):
            if payload.get("protocol") == "th" and l4 in ("tcp", "udp", "sctp", "udplite", "dccp"):
                exprs[i + 1] = {"match": {**nxt["match"], "left": {"payload": {**payload, "protocol": l4}}}}  # type: ignore[index]
                continue
            if (l4, payload.get("protocol")) in (("ipv6-icmp", "icmpv6"), ("icmp", "icmp")):
                continue
        out.append(e)
    return json.dumps(_sorted_sets(_counters_blank(out)), sort_keys=True), rule.get("comment", "")


def listed_rule(rule: dict[str, Any]) -> tuple[str, str]:
    """A rule from the kernel's listing, in the same form as canonical_rule's."""
    exprs, comment = rule.get("expr", []), rule.get("comment", "")
    return (json.dumps(_sorted_sets(_counters_blank(exprs if isinstance(exprs, list) else [exprs])), sort_keys=True),
            comment if isinstance(comment, str) else json.dumps(comment))


def _counters_blank(exprs: list[Any]) -> list[Any]:
    """A counter is the same rule whatever it has counted (we write `{"counter": null}`,
    the kernel lists packets and bytes)."""
    return [{"counter": None} if isinstance(e, dict) and "counter" in e else e for e in exprs]


def rule_counters(doc: dict[str, Any], table: str) -> list[tuple[str, str, int, int]]:
    """(chain, comment, packets, bytes) of every rule of our table with a counter, from a listing."""
    out = []
    for item in doc.get("nftables", []):
        body = item.get("rule")
        if not isinstance(body, dict) or body.get("family") != "inet" or body.get("table") != table:
            continue
        for e in body.get("expr", []):
            c = e.get("counter") if isinstance(e, dict) else None
            if isinstance(c, dict):
                out.append((str(body.get("chain", "")), str(body.get("comment", "")), int(c.get("packets", 0)), int(c.get("bytes", 0))))
    return out


# --- reading the kernel's JSON back ------------------------------------------------------


def parse_listing(doc: dict[str, Any], table: str) -> Ruleset:
    """A JSON listing (of the table or the whole ruleset) → our table's Ruleset (chains carry
    their digest and their rules as listed). Total: whatever someone else wrote into our
    table comes back as something that differs from what we want (objects.FOREIGN_ELEM,
    FOREIGN_TARGET), never as an exception, so the next sync repairs it."""
    rs = Ruleset()
    last_comment: dict[str, str] = {}
    listed: dict[str, list[tuple[str, str]]] = {}
    handles: dict[str, list[int]] = {}
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
            typ = body.get("type")
            typ = typ if isinstance(typ, list) else [typ]
            flags = body.get("flags", [])
            elems = body.get("elem", [])
            comment = body.get("comment", "")
            rs.sets[name] = SetDef(name, tuple(str(t) for t in typ), isinstance(flags, list) and "interval" in flags,
                                   comment if isinstance(comment, str) else "",
                                   frozenset(elem_from_json(e) for e in (elems if isinstance(elems, list) else [elems])))
        elif kind == "map":
            elems = body.get("elem", [])
            typ = body.get("type")
            entries = tuple(sorted(map_entry_from_json(e) for e in (elems if isinstance(elems, list) else [elems])))
            rs.maps[name] = MapDef(name, typ if isinstance(typ, str) else json.dumps(typ), entries)
        elif kind == "chain":
            prio = body.get("prio", 0)
            hook = Hook(str(body["hook"]), prio if isinstance(prio, int) else -1) if "hook" in body else None
            rs.chains[name] = ChainDef(name, (), hook, "")
        elif kind == "rule":
            comment = body.get("comment", "")
            last_comment[name] = comment if isinstance(comment, str) else ""
            listed.setdefault(name, []).append(listed_rule(body))
            handle = body.get("handle", -1)
            handles.setdefault(name, []).append(handle if isinstance(handle, int) else -1)
    for name, chain in rs.chains.items():
        m = DIGEST_RE.search(last_comment.get(name, ""))
        rs.chains[name] = ChainDef(name, (), chain.hook, m.group(1) if m else "", tuple(listed.get(name, ())),
                                   handles=tuple(handles.get(name, ())))
    return rs
