"""What changed in the kernel behind our back: the believed ruleset (what policyd last wrote)
against what the kernel lists. Pure; each backend says when a listed chain holds a chain
(its kernel normalises rules its own way)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import AbstractSet, Callable

from .objects import ChainDef, Ruleset

ChainHolds = Callable[[ChainDef, ChainDef], bool]

# Every kind of drift, the label of policyd_drift_repairs_total{kind}.
KINDS = ("table-missing", "chain-missing", "jump-missing", "chain-flushed", "rules-changed",
         "foreign-chain", "set-missing", "foreign-set", "set-elements", "map-missing", "foreign-map", "map-elements")


@dataclass(frozen=True)
class Drift:
    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


def _chain_drift(have: ChainDef, want: ChainDef) -> str:
    if have.listed is not None and not have.listed and want.rules:
        return "chain-flushed"
    return "rules-changed"  # a rule inserted, changed, appended or removed


def find_drift(believed: Ruleset, actual: Ruleset | None, holds: ChainHolds, elements: bool, table: str,
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
        elif not holds(have, want):
            out.append(Drift(_chain_drift(have, want), n))
    out += [Drift("foreign-chain", n) for n in sorted(set(actual.chains) - set(believed.chains))]
    for n, s in sorted(believed.sets.items()):
        got = actual.sets.get(n)
        if got is None or got.header() != s.header():
            out.append(Drift("set-missing", n))
        elif elements and n not in pending and got.elements != s.elements:
            out.append(Drift("set-elements", n))
    out += [Drift("foreign-set", n) for n in sorted(set(actual.sets) - set(believed.sets))]
    for n, m in sorted(believed.maps.items()):
        gm = actual.maps.get(n)
        if gm is None or gm.type != m.type:
            out.append(Drift("map-missing", n))
        elif elements and gm.elements != m.elements:
            out.append(Drift("map-elements", n))
    out += [Drift("foreign-map", n) for n in sorted(set(actual.maps) - set(believed.maps))]
    return out


@dataclass(frozen=True)
class Census:
    """A cheap look at what the kernel holds of ours (names and rule counts, no elements, no
    rule bodies): what the frequent drift check reads."""

    chains: dict[str, int]  # chain → number of rules
    sets: frozenset[str]
    maps: frozenset[str]
    hooks_missing: tuple[str, ...] = ()  # base chains the kernel's hooks no longer reach (iptables)


def census_drift(believed: Ruleset, census: Census | None, table: str) -> list[Drift]:
    if census is None:
        return [Drift("table-missing", table)]
    out: list[Drift] = []
    for n, want in sorted(believed.chains.items()):
        count = census.chains.get(n)
        if count is None:
            out.append(Drift("chain-missing", n))
        elif count != len(want.rules):
            out.append(Drift("chain-flushed" if count == 0 else "rules-changed", n))
    out += [Drift("jump-missing", n) for n in census.hooks_missing]
    out += [Drift("foreign-chain", n) for n in sorted(set(census.chains) - set(believed.chains))]
    out += [Drift("set-missing", n) for n in sorted(set(believed.sets) - census.sets)]
    out += [Drift("foreign-set", n) for n in sorted(census.sets - set(believed.sets))]
    out += [Drift("map-missing", n) for n in sorted(set(believed.maps) - census.maps)]
    out += [Drift("foreign-map", n) for n in sorted(census.maps - set(believed.maps))]
    return out
