"""Readable nft text for a Ruleset (what `policyd render` prints): the subset of
expressions the renderer produces, printed the way `nft list` would."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..dataplane.objects import ChainDef, Ruleset
from ..dataplane.rules import Rule
from .spell import elem_json, map_type, rule_json, set_type

PRIORITY_NAMES = {0: "filter"}


def value(v: Any) -> str:
    if isinstance(v, list):
        return ",".join(value(x) for x in v)
    if isinstance(v, dict):
        if "set" in v:
            return "{ " + ", ".join(value(x) for x in v["set"]) + " }"
        if "range" in v:
            return f"{value(v['range'][0])}-{value(v['range'][1])}"
        if "prefix" in v:
            return f"{v['prefix']['addr']}/{v['prefix']['len']}"
        if "concat" in v:
            return " . ".join(value(x) for x in v["concat"])
        if "payload" in v:
            return f"{v['payload']['protocol']} {v['payload']['field']}"
        if "meta" in v:
            key = v["meta"]["key"]
            return key if key in ("iifname", "oifname") else f"meta {key}"
        if "ct" in v:
            return f"ct {v['ct']['key']}"
        if "&" in v:
            return f"{value(v['&'][0])} & {v['&'][1]:#010x}"
    return str(v)


def expr(e: dict[str, Any]) -> str:
    (kind, body), = e.items()
    if kind == "match":
        op = "" if body["op"] in ("==", "in") else body["op"] + " "
        right = body["right"]
        if isinstance(body["left"], dict) and "&" in body["left"] and isinstance(right, int):
            return f"{value(body['left'])} == {right:#010x}"  # a mark's bits
        return f"{value(body['left'])} {op}{value(right)}"
    if kind == "vmap":
        return f"{value(body['key'])} vmap {body['data']}"
    if kind in ("goto", "jump"):
        return f"{kind} {body['target']}"
    return kind  # accept, drop, return


def rule_text(r: Mapping[str, Any]) -> str:
    text = " ".join(expr(e) for e in r["expr"])
    if r.get("comment"):
        text += f' comment "{r["comment"]}"'
    return text


def chain_text(c: ChainDef) -> list[str]:
    lines = [f"\tchain {c.name} {{"]
    if c.hook is not None:
        prio = PRIORITY_NAMES.get(c.hook.priority, str(c.hook.priority))
        lines.append(f"\t\ttype {c.hook.type} hook {c.hook.hook} priority {prio}; policy {c.hook.policy};")
    lines += [f"\t\t{rule_text(rule_json(r))}" for r in c.rules if isinstance(r, Rule)]
    lines.append("\t}")
    return lines


def ruleset_text(rs: Ruleset, table: str) -> str:
    lines = [f"table inet {table} {{"]
    for s in sorted(rs.sets.values(), key=lambda s: s.name):
        lines.append(f"\tset {s.name} {{")
        lines.append(f"\t\ttype {' . '.join(set_type(s))}")
        if s.kind.value == "prefix":
            lines.append("\t\tflags interval")
        if s.comment:
            lines.append(f'\t\tcomment "{s.comment}"')
        if s.elements:
            lines.append("\t\telements = { " + ", ".join(value(elem_json(e)) for e in sorted(s.elements, key=str)) + " }")
        lines.append("\t}")
    for m in sorted(rs.maps.values(), key=lambda m: m.name):
        lines.append(f"\tmap {m.name} {{")
        lines.append(f"\t\ttype {map_type(m)} : verdict")
        if m.elements:
            key = (lambda k: f'"{k}"') if m.family == 0 else str
            lines.append("\t\telements = { " + ", ".join(f"{key(k)} : jump {c}" for k, c in m.elements) + " }")
        lines.append("\t}")
    base = sorted((c for c in rs.chains.values() if c.hook), key=lambda c: c.name)
    others = sorted((c for c in rs.chains.values() if not c.hook), key=lambda c: c.name)
    for c in base + others:
        lines += chain_text(c)
    lines.append("}")
    return "\n".join(lines) + "\n"
