"""What changed in the kernel behind our back: the believed ruleset (what policyd last wrote)
against what the kernel lists (typed, as each backend parses it). Pure."""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from .objects import ChainDef, Ruleset, chain_holds

# Every kind of drift, the label of policyd_drift_repairs_total{kind}.
DRIFT_KINDS = ("table-missing", "chain-missing", "jump-missing", "chain-flushed", "rules-changed",
         "foreign-chain", "set-missing", "foreign-set", "set-elements", "map-missing", "foreign-map", "map-elements",
         "hook-changed", "jump-not-first")


@dataclass(frozen=True)
class Drift:
    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


def _chain_drift(have: ChainDef, want: ChainDef) -> str:
    if have.hook != want.hook and have.hooked_families is None:
        return "hook-changed"  # a base chain's hook, priority, type or policy
    if have.listed and not have.rules and want.rules:
        return "chain-flushed"
    return "rules-changed"  # a rule inserted, changed, appended or removed


def _foreign(what: str, believed: AbstractSet[str], actual: AbstractSet[str]) -> list[Drift]:
    """Objects in our namespace that policyd did not write."""
    return [Drift(f"foreign-{what}", n) for n in sorted(set(actual) - set(believed))]


def find_drift(believed: Ruleset, actual: Ruleset | None, elements: bool, table: str,
               pending: AbstractSet[str] = frozenset()) -> list[Drift]:
    """`elements`: the listing includes set and map elements (else only their definitions).
    `pending`: sets with changes of ours not yet written, whose believed elements already
    show them (desired and believed share element sets): not compared element by element."""
    if actual is None:
        return [Drift("table-missing", table)]
    out: list[Drift] = []
    for n, want in sorted(believed.chains.items()):
        have = actual.chains.get(n)
        if have is None:
            out.append(Drift("chain-missing", n))
        elif not chain_holds(have, want):
            out.append(Drift(_chain_drift(have, want), n))
    out += _foreign("chain", believed.chains.keys(), actual.chains.keys())
    for n, s in sorted(believed.sets.items()):
        got = actual.sets.get(n)
        if got is None or got.header() != s.header():
            out.append(Drift("set-missing", n))
        elif elements and n not in pending and not s.learned and got.elements != s.elements:
            out.append(Drift("set-elements", n))
    out += _foreign("set", believed.sets.keys(), actual.sets.keys())
    for n, m in sorted(believed.maps.items()):
        gm = actual.maps.get(n)
        if gm is None or gm.family != m.family:
            out.append(Drift("map-missing", n))
        elif elements and gm.elements != m.elements:
            out.append(Drift("map-elements", n))
    out += _foreign("map", believed.maps.keys(), actual.maps.keys())
    return out
