"""(what the kernel holds, what we want) → one Transaction, in an order the kernel accepts.

Order: create new sets, maps and (empty) chains; change the rules of changed chains; update
set and map elements; then delete chains and sets nothing refers to any more.

A changed chain whose rules' handles are known (`Handles`: what the backend last wrote or
listed) is edited rule by rule: the rules between the unchanged head and the unchanged tail
are deleted by handle, the new ones inserted in their place, and the last rule (which
carries the chain's digest) replaced. A policy added to a pod's chain of 200 rules is then
three operations, not a flush and 201 adds: the cost of an event does not grow with the
chain. Without known handles (a chain read back from the kernel that differs, a new chain),
the chain is flushed and refilled.
With `touched` only those names are compared (partial sync); without it, everything
(full sync). Sets with an element delta send just that delta: `actual` may share the very
element set desired keeps (they are equal after every sync), so comparing would find
nothing. An unchanged state yields a transaction with zero operations.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from ..compile.changes import SetDelta
from ..dataplane.objects import ChainDef, Elem, Ruleset, Touched, names_to_compare
from .ruleset import (
    canonical_rule,
    chain_json,
    elements_json,
    map_elements_json,
    map_json,
    rule_json,
    set_json,
)

# chain → (the chain's digest, its rules' handles in order) as the kernel holds it.
Handles = Mapping[str, tuple[str, tuple[int, ...]]]
# A chain's rules' handles after a transaction: None for a rule it adds (the kernel picks
# the handle; the backend learns it from the transaction's echo).
HandlePlan = list[int | None]


@dataclass
class Transaction:
    """One libnftables batch. `ops` counts commands and elements, the unit of kernel work."""

    commands: list[dict[str, Any]] = field(default_factory=list)
    ops: int = 0
    plans: dict[str, tuple[str, HandlePlan]] = field(default_factory=dict)  # chain → (digest, handles after)
    forget: list[str] = field(default_factory=list)  # chains it deletes
    rule_adds: int = 0  # add and insert rule commands (their handles come back in the echo)

    def add(self, verb: str, obj: dict[str, Any], weight: int = 1) -> None:
        self.commands.append({verb: obj})
        self.ops += weight

    def __bool__(self) -> bool:
        return bool(self.commands)

    def to_json(self) -> str:
        return json.dumps({"nftables": [{"metainfo": {"json_schema_version": 1}}, *self.commands]})


_CANONICAL: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {}


def canonical_chain(c: ChainDef) -> tuple[tuple[str, str], ...]:
    """The chain's rules in the kernel's normal form, once per chain version (a chain's
    digest names its rules), so a full resync does not re-encode 12,000 unchanged rules."""
    key = (c.name, c.digest)
    got = _CANONICAL.get(key)
    if got is None:
        if len(_CANONICAL) > 200_000:
            _CANONICAL.clear()
        got = _CANONICAL[key] = tuple(canonical_rule(r) for r in c.rules)
    return got


def chain_holds(have: ChainDef, want: ChainDef) -> bool:
    """Whether the chain `have` (believed, or listed by the kernel) is `want`."""
    if have.digest != want.digest or have.hook != want.hook:
        return False
    if have.listed is None:
        return True
    wanted = want.listed if want.listed is not None else canonical_chain(want)
    return tuple(have.listed) == tuple(wanted)


def diff(
    actual: Ruleset | None,
    desired: Ruleset,
    table: str,
    touched: Touched | None = None,
    deltas: dict[str, SetDelta[Elem]] | None = None,
    handles: Handles | None = None,
) -> Transaction:
    """`touched` limits the names compared; `deltas` (default: touched's) are trusted element
    changes of sets whose kernel elements equal desired's before the delta; `handles` lets
    changed chains be edited rule by rule."""
    tx = Transaction()
    if deltas is None:
        deltas = touched.deltas if touched is not None else {}
    if actual is None:
        tx.add("add", {"table": {"family": "inet", "name": table}})
        actual = Ruleset()
    set_names, map_names, chain_names = names_to_compare(actual, desired, touched)

    # 1. new (or redefined) sets and maps, new chains (empty, so jumps can refer to them)
    for n in set_names:
        have, want = actual.sets.get(n), desired.sets.get(n)
        if want is not None and (have is None or have.header() != want.header()):
            if have is not None:  # type changed: cannot happen for content-addressed names
                tx.add("delete", {"set": {"family": "inet", "table": table, "name": n}})
            tx.add("add", set_json(table, want))
            if want.elements:
                tx.add("add", elements_json(table, n, sorted(want.elements, key=str)), len(want.elements))
    for n in map_names:
        if n in desired.maps and n not in actual.maps:
            tx.add("add", map_json(table, desired.maps[n]))
    for n in chain_names:
        want_c = desired.chains.get(n)
        if want_c is not None and n not in actual.chains:
            tx.add("add", chain_json(table, want_c))

    # 2. chain contents, when the digest differs or (read from the kernel) any rule differs
    #    from what we want: edited rule by rule where the handles are known, else flushed
    #    and refilled
    for n in chain_names:
        want_c = desired.chains.get(n)
        have_c = actual.chains.get(n)
        if want_c is None or (have_c is not None and chain_holds(have_c, want_c)):
            continue
        if have_c is not None:
            if have_c.hook != want_c.hook:
                raise ValueError(f"chain {n} changed its hook; delete the table to re-create it")
            known = _known_handles(have_c, handles or {})
            if known is not None and _edit_rules(tx, table, have_c, want_c, known):
                continue
            tx.add("flush", {"chain": {"family": "inet", "table": table, "name": n}})
        _add_rules(tx, table, want_c)

    # 3. elements of existing sets and maps
    for n in set_names:
        have, want = actual.sets.get(n), desired.sets.get(n)
        if have is None or want is None or have.header() != want.header():
            continue
        gone: AbstractSet[Elem]
        new: AbstractSet[Elem]
        if n in deltas:
            gone, new = deltas[n].removed, deltas[n].added
        else:
            gone, new = have.elements - want.elements, want.elements - have.elements
        if gone:
            tx.add("delete", elements_json(table, n, sorted(gone, key=str)), len(gone))
        if new:
            tx.add("add", elements_json(table, n, sorted(new, key=str)), len(new))
    for n in map_names:
        have_m, want_m = actual.maps.get(n), desired.maps.get(n)
        if want_m is None:
            continue
        have_e = dict(have_m.elements) if have_m else {}
        want_e = dict(want_m.elements)
        gone_k = [(k, c) for k, c in have_e.items() if want_e.get(k) != c]
        new_k = [(k, c) for k, c in want_e.items() if have_e.get(k) != c]
        if gone_k:
            tx.add("delete", map_elements_json(table, n, sorted(gone_k)), len(gone_k))
        if new_k:
            tx.add("add", map_elements_json(table, n, sorted(new_k)), len(new_k))

    # 4. objects nothing refers to any more: maps, chains (flushed first), then sets
    for n in map_names:
        if n in actual.maps and n not in desired.maps:
            tx.add("delete", {"map": {"family": "inet", "table": table, "name": n}})
    stale = [n for n in chain_names if n in actual.chains and n not in desired.chains]
    for n in stale:
        tx.add("flush", {"chain": {"family": "inet", "table": table, "name": n}})
    for n in stale:
        tx.add("delete", {"chain": {"family": "inet", "table": table, "name": n}})
        tx.forget.append(n)
    for n in set_names:
        if n in actual.sets and n not in desired.sets:
            tx.add("delete", {"set": {"family": "inet", "table": table, "name": n}})
    return tx


def _add_rules(tx: Transaction, table: str, chain: ChainDef) -> None:
    for r in chain.rules:
        tx.add("add", rule_json(table, chain.name, r))
    tx.rule_adds += len(chain.rules)
    tx.plans[chain.name] = (chain.digest, [None] * len(chain.rules))


def _known_handles(have: ChainDef, handles: Handles) -> tuple[int, ...] | None:
    """The handles of the chain we believe the kernel holds, if known for exactly its rules
    (a chain listed from the kernel that differs from what we want is rewritten whole)."""
    if have.listed is not None:
        return None
    got = handles.get(have.name)
    if got is None or got[0] != have.digest or len(got[1]) != len(have.rules):
        return None
    return got[1]


def _edit_rules(tx: Transaction, table: str, have: ChainDef, want: ChainDef, handles: tuple[int, ...]) -> bool:
    """`have` → `want` by deleting, inserting and replacing rules, when that is cheaper than
    a flush and refill; False (nothing added) otherwise. Only the rules between the longest
    unchanged head and tail change; the last rule, which carries the digest, is replaced in
    place (the kernel keeps its handle)."""
    old, new = have.rules, want.rules
    if not old or not new:
        return False
    a, b = old[:-1], new[:-1]
    head, most = 0, min(len(a), len(b))
    while head < most and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < most - head and a[len(a) - 1 - tail] == b[len(b) - 1 - tail]:
        tail += 1
    gone = handles[head:len(a) - tail]
    added = b[head:len(b) - tail]
    if len(gone) + len(added) + 1 >= len(new) + 1:
        return False
    anchor = handles[len(a) - tail]  # the first rule after the changed span (the last rule, without a tail)
    for h in gone:
        tx.add("delete", {"rule": {"family": "inet", "table": table, "chain": have.name, "handle": h}})
    for r in added:
        tx.add("insert", {"rule": {**rule_json(table, want.name, r)["rule"], "handle": anchor}})
    tx.add("replace", {"rule": {**rule_json(table, want.name, new[-1])["rule"], "handle": handles[-1]}})
    tx.rule_adds += len(added)
    tx.plans[want.name] = (want.digest, [*handles[:head], *([None] * len(added)), *handles[len(a) - tail:]])
    return True


def learn_handles(known: dict[str, tuple[str, tuple[int, ...]]], tx: Transaction, echoed: Mapping[str, list[int]] | None) -> None:
    """`known` after `tx` was committed: its planned chains with the handles the kernel gave
    the rules it added (`echoed`: chain → handles in command order; None: not echoed, so
    those chains' handles are unknown and their next change rewrites them whole)."""
    for n in tx.forget:
        known.pop(n, None)
    for n, (digest, plan) in tx.plans.items():
        fill = iter(echoed.get(n, ()) if echoed is not None else ())
        got = [h if h is not None else next(fill, None) for h in plan]
        if echoed is None or any(h is None for h in got) or next(fill, None) is not None:
            known.pop(n, None)
        else:
            known[n] = (digest, tuple(h for h in got if h is not None))
