"""(what the kernel holds, what we want) → one Transaction, in an order the kernel accepts.

Order: create new sets, maps and (empty) chains; change the rules of changed chains; update
set and map elements (a set or map that holds anything we never write, such as a verdict
other than a jump, is flushed and refilled); then delete chains and sets nothing refers to
any more.

A changed chain is flushed and refilled, unless only its order-free steps (ChainDef.free:
NetworkPolicy allow rules) changed and the kernel's handles of its rules are known: then
the steps that went are deleted by handle, the old last step (it carries the digest) too,
and the new steps and the new last step are appended. Appends and deletes by handle are the
two commands libnftables runs without first reading the whole table (`bench/run.py --only
nft-ops`), so a policy added to a pod with 200 rules is a handful of operations, not 200.
The kernel then holds the steps in the order they came (`KernelChain`), which holds the
same chain (`chain_holds`).
With `touched` only those names are compared (partial sync); without it, everything
(full sync). Sets with an element delta send just that delta: `actual` may share the very
element set desired keeps (they are equal after every sync), so comparing would find
nothing. An unchanged state yields a transaction with zero operations.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from ..compile.changes import SetDelta
from ..dataplane.objects import FOREIGN_TARGET, ChainDef, Elem, Ruleset, Touched, is_foreign, names_to_compare
from .ruleset import (
    canonical_rule,
    chain_json,
    elements_json,
    map_elements_json,
    map_json,
    rule_json,
    set_json,
)


@dataclass(frozen=True)
class KernelChain:
    """A chain as our last write left it in the kernel: the desired chain's digest, each
    rule's key in the kernel's order, and where its order-free steps are in that order."""

    digest: str
    keys: tuple[str, ...]
    free: tuple[int, tuple[int, ...]] | None


# A chain's rules' handles in the kernel's order, read when an edit needs them (None: not
# known, or not what we wrote: the chain is refilled).
HandlesOf = Callable[[str], tuple[int, ...] | None]


@dataclass
class Transaction:
    """One libnftables batch. `ops` counts commands and elements, the unit of kernel work."""

    commands: list[dict[str, Any]] = field(default_factory=list)
    ops: int = 0
    layouts: dict[str, KernelChain] = field(default_factory=dict)  # what each chain it writes holds after it
    forget: list[str] = field(default_factory=list)  # chains it deletes

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
    """Whether the chain `have` (believed, or listed by the kernel) is `want`. Listed rules
    are compared one by one, but for the steps that may stand in any order (`free`), which
    must be there as many times each, in any order."""
    if have.digest != want.digest or have.hook != want.hook:
        return False
    if have.listed is None:
        return True
    wanted = tuple(want.listed if want.listed is not None else canonical_chain(want))
    listed = tuple(have.listed)
    if listed == wanted:
        return True
    if want.free is None or len(listed) != len(wanted):
        return False
    a = want.free[0]
    b = a + sum(want.free[1])
    return listed[:a] == wanted[:a] and listed[b:] == wanted[b:] and Counter(listed[a:b]) == Counter(wanted[a:b])


def diff(
    actual: Ruleset | None,
    desired: Ruleset,
    table: str,
    touched: Touched | None = None,
    deltas: dict[str, SetDelta[Elem]] | None = None,
    kernel: Mapping[str, KernelChain] | None = None,
    handles_of: HandlesOf | None = None,
) -> Transaction:
    """`touched` limits the names compared; `deltas` (default: touched's) are trusted element
    changes of sets whose kernel elements equal desired's before the delta; `kernel` and
    `handles_of` (what our writes left, and its handles) let a chain be edited in place."""
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

    # 2. chain contents: flush and refill when the digest differs, or (read from the
    #    kernel) when any rule differs from what we want
    for n in chain_names:
        want_c = desired.chains.get(n)
        have_c = actual.chains.get(n)
        if want_c is None or (have_c is not None and chain_holds(have_c, want_c)):
            continue
        if have_c is not None:
            if have_c.hook != want_c.hook:
                raise ValueError(f"chain {n} changed its hook; delete the table to re-create it")
            km = (kernel or {}).get(n)
            if km is not None and handles_of is not None and have_c.listed is None and km.digest == have_c.digest \
                    and _edit_free_steps(tx, table, want_c, km, handles_of):
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
            if any(map(is_foreign, gone)):  # an element we never write: start the set over
                tx.add("flush", {"set": {"family": "inet", "table": table, "name": n}})
                gone, new = frozenset(), want.elements
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
        if any(c == FOREIGN_TARGET for _, c in gone_k):  # an entry we never write: start the map over
            tx.add("flush", {"map": {"family": "inet", "table": table, "name": n}})
            gone_k, new_k = [], list(want_e.items())
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
    if chain.keys is not None:
        tx.layouts[chain.name] = KernelChain(chain.digest, chain.keys, chain.free)


def _steps(keys: tuple[str, ...], free: tuple[int, tuple[int, ...]]) -> list[tuple[int, tuple[str, ...]]]:
    """The order-free steps: (index of the first rule, the rules' keys), in order."""
    out, at = [], free[0]
    for size in free[1]:
        out.append((at, keys[at:at + size]))
        at += size
    return out


def _edit_free_steps(tx: Transaction, table: str, want: ChainDef, km: KernelChain, handles_of: HandlesOf) -> bool:
    """`km` → `want` by deleting the steps that went and the old last step, and appending the
    new steps and the new last step, when only order-free steps differ before the last step
    and that is cheaper than a refill; False (nothing added) otherwise."""
    if want.free is None or km.free is None or want.keys is None or want.free[0] != km.free[0]:
        return False
    start = want.free[0]
    if km.keys[:start] != want.keys[:start]:
        return False  # something before the order-free steps changed
    have_steps, want_steps = _steps(km.keys, km.free), _steps(want.keys, want.free)
    wanted = Counter(k for _, k in want_steps)
    kept: list[tuple[str, ...]] = []
    gone: list[int] = []
    for at, k in have_steps:
        if wanted[k] > 0:
            wanted[k] -= 1
            kept.append(k)
        else:
            gone += range(at, at + len(k))
    spare = Counter(kept)
    added: list[tuple[int, tuple[str, ...]]] = []
    for at, k in want_steps:
        if spare[k] > 0:
            spare[k] -= 1
        else:
            added.append((at, k))
    old_last = range(start + sum(km.free[1]), len(km.keys))
    new_last = start + sum(want.free[1])
    ops = len(gone) + len(old_last) + sum(len(k) for _, k in added) + len(want.rules) - new_last
    if ops >= len(want.rules) + 1:
        return False
    handles = handles_of(want.name)
    if handles is None or len(handles) != len(km.keys):
        return False
    for i in [*gone, *old_last]:
        tx.add("delete", {"rule": {"family": "inet", "table": table, "chain": want.name, "handle": handles[i]}})
    for at, k in added:
        for r in want.rules[at:at + len(k)]:
            tx.add("add", rule_json(table, want.name, r))
    for r in want.rules[new_last:]:
        tx.add("add", rule_json(table, want.name, r))
    keys = (*km.keys[:start], *(x for k in kept for x in k), *(x for _, k in added for x in k), *want.keys[new_last:])
    tx.layouts[want.name] = KernelChain(want.digest, keys, (start, (*map(len, kept), *(len(k) for _, k in added))))
    return True
