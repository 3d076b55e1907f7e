"""(what the kernel holds, what we want) → one ordered list of typed operations (pure), the
same for every backend; each backend only spells them (nft: one libnftables JSON batch;
iptables: ipset and iptables-restore text, where a rule edit is spelled as a refill).

Order: create new sets (with their elements) and change the elements of existing ones;
create new maps and (empty) chains; fill or edit the rules of new and changed chains;
change map entries; hook base chains in; then remove what nothing refers to any more:
maps, chains (flushed now, deleted in a later sync at least `STALE_DELAY` after, as
kube-proxy does: no transaction deletes a chain that a map entry removed in it pointed at),
and sets.

A changed chain is flushed and refilled, unless only its order-free steps (ChainDef.free:
NetworkPolicy allow rules) changed, what we wrote is known (not a listing) and that is
cheaper: then the rules of the steps that went and the old last step are deleted by rule
id, and the new steps and the new last step appended. The kernel then holds the steps in
the order they came, which holds the same chain (`objects.chain_holds`).

With `touched` only those names are compared (partial sync), with the chains still waiting
for their deletion; without it everything (full sync). Sets with an element delta send just
that delta: `actual` may share the very element set desired keeps (they are equal after
every sync), so comparing would find nothing. A set or map holding something policyd never
writes (objects.FOREIGN_*) is flushed and refilled. An unchanged state yields no operation.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from ..compile.changes import SetDelta
from .objects import FOREIGN_TARGET, ChainDef, Elem, MapDef, Ruleset, SetDef, Touched, chain_holds, is_foreign, names_to_compare
from .rules import Rule

STALE_DELAY = 1.0  # seconds between a chain's flush and its deletion


@dataclass(frozen=True)
class CreateTable:
    pass


@dataclass(frozen=True)
class CreateSet:
    set: SetDef  # with its elements


@dataclass(frozen=True)
class SetElements:
    set: SetDef  # the desired set (its elements are all of them, for a refill)
    added: AbstractSet[Elem]
    removed: AbstractSet[Elem]
    flush: bool = False  # flush first: `added` is then every element


@dataclass(frozen=True)
class DeleteSet:
    set: SetDef  # as it was


@dataclass(frozen=True)
class CreateMap:
    map: MapDef  # empty: its entries follow as MapEntries


@dataclass(frozen=True)
class MapEntries:
    map: MapDef  # the desired map (all its entries, for a backend that rewrites it whole)
    added: tuple[tuple[str, str], ...]
    removed: tuple[tuple[str, str], ...]
    flush: bool = False


@dataclass(frozen=True)
class DeleteMap:
    map: MapDef  # as it was


@dataclass(frozen=True)
class CreateChain:
    chain: ChainDef  # created empty (with its hook)


@dataclass(frozen=True)
class FillChain:
    chain: ChainDef
    flush: bool  # it exists: flush it first


@dataclass(frozen=True)
class EditChain:
    """Delete the rules with these ids (each once per listing) and append these rules;
    `chain` is the desired chain, for a backend that refills instead."""

    chain: ChainDef
    delete: tuple[str, ...]
    append: tuple[Rule, ...]


@dataclass(frozen=True)
class HookChain:
    """Hook a base chain in where the kernel lacks it (iptables: put its jump first in these
    families, deleting first its jumps that stand elsewhere: one family per jump)."""

    chain: ChainDef
    families: tuple[int, ...]
    stray: tuple[int, ...] = ()


@dataclass(frozen=True)
class FlushChain:
    chain: ChainDef  # as it was (with its hook, for a backend that unhooks it too)


@dataclass(frozen=True)
class DeleteChain:
    chain: ChainDef


Op = (CreateTable | CreateSet | SetElements | DeleteSet | CreateMap | MapEntries | DeleteMap | CreateChain | FillChain
      | EditChain | HookChain | FlushChain | DeleteChain)


def weight(op: Op) -> int:
    """Kernel work: one per object, rule or element."""
    if isinstance(op, CreateSet):
        return 1 + len(op.set.elements)
    if isinstance(op, SetElements):
        return len(op.added) + len(op.removed) + op.flush
    if isinstance(op, MapEntries):
        return len(op.added) + len(op.removed) + op.flush
    if isinstance(op, FillChain):
        return len(op.chain.rules) + op.flush
    if isinstance(op, EditChain):
        return len(op.delete) + len(op.append)
    if isinstance(op, HookChain):
        return len(op.families) + len(op.stray)
    return 1


@dataclass
class Plan:
    ops: list[Op] = field(default_factory=list)
    stale: dict[str, float] = field(default_factory=dict)  # chains flushed, waiting for their deletion: since when

    @property
    def weight(self) -> int:
        return sum(map(weight, self.ops))

    def __bool__(self) -> bool:
        return bool(self.ops)


ALL_FAMILIES = frozenset({4, 6})


def plan(actual: Ruleset | None, desired: Ruleset, touched: Touched | None = None,
         deltas: Mapping[str, SetDelta[Elem]] | None = None, stale: Mapping[str, float] | None = None,
         now: float = 0.0) -> Plan:
    """`touched` limits the names compared; `deltas` (default: touched's) are trusted element
    changes of sets whose kernel elements equal desired's before the delta; `stale` the
    chains flushed earlier and waiting for their deletion (since when), `now` the time."""
    out = Plan(stale=dict(stale or {}))
    ops = out.ops
    if deltas is None:
        deltas = touched.deltas if touched is not None else {}
    if actual is None:
        ops.append(CreateTable())
        actual = Ruleset()
    set_names, map_names, chain_names = names_to_compare(actual, desired, touched)
    if touched is not None:
        chain_names = sorted(set(chain_names) | set(out.stale))

    # 1. sets: new ones with their elements, element changes of the others
    for n in set_names:
        have, want = actual.sets.get(n), desired.sets.get(n)
        if want is None:
            continue
        if have is not None and have.header() != want.header():  # re-made by someone else: start over
            ops.append(DeleteSet(have))
            have = None
        if have is None:
            ops.append(CreateSet(want))
            continue
        if want.learned:
            continue  # (its elements are the data path's)
        if n in deltas:
            gone, new = deltas[n].removed, deltas[n].added
            if gone or new:
                ops.append(SetElements(want, new, gone))
            continue
        went, came = have.elements - want.elements, want.elements - have.elements
        if any(map(is_foreign, went)):  # an element we never write: start the set over
            ops.append(SetElements(want, want.elements, frozenset(), flush=True))
        elif went or came:
            ops.append(SetElements(want, came, went))

    # 2. new maps, new chains (empty, so that jumps and map entries can refer to them)
    for n in map_names:
        if n in desired.maps and n not in actual.maps:
            ops.append(CreateMap(desired.maps[n]))
    for n in chain_names:
        want_c = desired.chains.get(n)
        if want_c is not None and n not in actual.chains:
            ops.append(CreateChain(want_c))

    # 3. chain contents
    for n in chain_names:
        want_c = desired.chains.get(n)
        if want_c is None:
            continue
        out.stale.pop(n, None)
        have_c = actual.chains.get(n)
        if have_c is not None and chain_holds(have_c, want_c):
            continue
        if have_c is not None and have_c.hook != want_c.hook and have_c.hooked_families is None:
            # a base chain's hook, priority, type or policy changed (or a chain of ours
            # hooked): nothing refers to a base chain, so it is made again at once
            ops += [FlushChain(have_c), DeleteChain(have_c), CreateChain(want_c)]
            have_c = None
        if have_c is not None and have_c.rules:
            edit = None if have_c.listed else edit_free_steps(have_c, want_c)
            ops.append(edit or FillChain(want_c, flush=True))
        elif want_c.rules:
            ops.append(FillChain(want_c, flush=False))

    # 4. map entries
    for n in map_names:
        have_m, want_m = actual.maps.get(n), desired.maps.get(n)
        if want_m is None:
            continue
        have_e = dict(have_m.elements) if have_m else {}
        want_e = dict(want_m.elements)
        gone_k = tuple(sorted((k, c) for k, c in have_e.items() if want_e.get(k) != c))
        new_k = tuple(sorted((k, c) for k, c in want_e.items() if have_e.get(k) != c))
        if any(c == FOREIGN_TARGET for _, c in gone_k):  # an entry we never write: start the map over
            ops.append(MapEntries(want_m, want_m.elements, (), flush=True))
        elif gone_k or new_k:
            ops.append(MapEntries(want_m, new_k, gone_k))

    # 5. base chains hooked in where the kernel lacks it
    for n in chain_names:
        want_c = desired.chains.get(n)
        if want_c is None or want_c.hook is None or n not in actual.chains:
            continue  # (a new chain is created with its hook)
        have_c = actual.chains[n]
        if have_c.hooked_families is not None:  # a backend whose hooks are per family (iptables' jumps)
            missing = tuple(sorted(ALL_FAMILIES - have_c.hooked_families)) if have_c.hook == want_c.hook else (4, 6)
            if missing:
                ops.append(HookChain(want_c, missing, have_c.stray_hooks))

    # 6. what nothing refers to any more: maps; chains flushed now and deleted once they
    #    have waited (an empty one found in a listing waits without a flush); then sets
    for n in map_names:
        if n in actual.maps and n not in desired.maps:
            ops.append(DeleteMap(actual.maps[n]))
    for n in chain_names:
        have_c = actual.chains.get(n)
        if n in desired.chains:
            continue
        if have_c is None:
            out.stale.pop(n, None)
            continue
        since = out.stale.get(n)
        if since is None or have_c.rules:
            if have_c.rules or have_c.hook is not None:
                ops.append(FlushChain(have_c))
            out.stale[n] = now if since is None or have_c.rules else since
        elif now - since >= STALE_DELAY:
            ops.append(DeleteChain(have_c))
            del out.stale[n]
    for n in set_names:
        if n in actual.sets and n not in desired.sets:
            ops.append(DeleteSet(actual.sets[n]))
    return out


def _steps(ids: tuple[str, ...], free: tuple[int, tuple[int, ...]]) -> list[tuple[int, tuple[str, ...]]]:
    """The order-free steps: (index of the first rule, the rules' ids), in order."""
    out, at = [], free[0]
    for size in free[1]:
        out.append((at, ids[at:at + size]))
        at += size
    return out


def edit_free_steps(have: ChainDef, want: ChainDef) -> EditChain | None:
    """`have` (what we wrote) → `want` by deleting the steps that went and the old last step
    and appending the new steps and the new last step, when only order-free steps differ
    before the last step and that is cheaper than a refill; None otherwise."""
    if want.free is None or have.free is None or want.free[0] != have.free[0]:
        return None
    start = want.free[0]
    have_ids, want_ids = have.ids(), want.ids()
    if have_ids[:start] != want_ids[:start]:
        return None  # something before the order-free steps changed
    wanted = Counter(k for _, k in _steps(want_ids, want.free))
    kept: list[tuple[str, ...]] = []
    gone: list[str] = []
    for _, k in _steps(have_ids, have.free):
        if wanted[k] > 0:
            wanted[k] -= 1
            kept.append(k)
        else:
            gone += k
    spare = Counter(kept)
    added: list[Rule] = []
    for at, k in _steps(want_ids, want.free):
        if spare[k] > 0:
            spare[k] -= 1
        else:
            added += [r for r in want.rules[at:at + len(k)] if isinstance(r, Rule)]
    old_last = have_ids[start + sum(have.free[1]):]
    new_last = [r for r in want.rules[start + sum(want.free[1]):] if isinstance(r, Rule)]
    if len(gone) + len(old_last) + len(added) + len(new_last) >= len(want.rules) + 1:
        return None
    return EditChain(want, (*gone, *old_last), (*added, *new_last))


def stale_chain(name: str) -> ChainDef:
    """A chain flushed and waiting for its deletion, as we believe the kernel holds it."""
    return ChainDef.build(name, ())
