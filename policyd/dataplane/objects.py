"""The dataplane's objects as plain immutable data, the same for every backend.

A `Ruleset` is what policyd owns in the kernel: sets (with elements), dispatch maps (key →
chain, with elements) and chains. Chains carry a digest of their rules, stored in the
comment of the chain's last rule: what we believe the kernel holds is compared by digest;
what the kernel lists is compared rule by rule too (kernels read rules back in a normalised
form, so each backend puts its desired rules into that form first); sets and maps are
compared element by element.
What a rule body or an element *is* belongs to the backend's renderer (libnftables JSON
for nftables, iptables arguments and ipset entries for iptables).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, TypedDict

from ..compile.changes import SetChangeLog

# Elements: "10.0.0.1" | ("prefix", "10.0.0.0", 8) | ("concat", "10.0.0.1", "tcp", 80)
Elem = str | tuple[Any, ...]

# What a listing of the kernel holds in policyd's objects that policyd never writes, kept so
# that it differs from anything desired and the diff removes it (never an exception while
# reading): a set element of a shape policyd does not write is ("foreign", its JSON); a map
# entry whose verdict is not a jump to a chain (accept, drop, goto…) or whose key cannot be
# read has FOREIGN_TARGET, which no chain is named. A set or map holding any is flushed and
# refilled in one transaction.
FOREIGN_ELEM = "foreign"
FOREIGN_TARGET = ""


def is_foreign(e: Elem) -> bool:
    return isinstance(e, tuple) and bool(e) and e[0] == FOREIGN_ELEM

# A set's elements are frozen, except in the live sets DesiredState owns and changes in
# place by each event's delta (O(delta), not O(set)). A Ruleset copied from desired (what
# the syncer believes after a sync) shares those live sets: it holds the names and headers
# as they were, and the elements as desired has them now, which the kernel holds too once
# the deltas are applied; element drift is found by the full resync, which reads the kernel.
LiveElements = set[Elem]
Elements = frozenset[Elem] | LiveElements

class RuleBody(TypedDict, total=False):
    """One rule as its backend writes it. nftables: `expr`, libnftables JSON expressions;
    iptables: `match` (its arguments before `-j`), `target`, `goto` (`-g target`, not `-j`)
    and `family` (4, 6, or 0 for both). Either: `comment`, whose end carries the chain's
    digest in a chain's last rule."""

    expr: list[dict[str, Any]]
    match: str
    target: str
    goto: bool
    family: int
    comment: str


DIGEST_RE = re.compile(r"\[([0-9a-f]{12})\]$")
COMMENT_MAX = 120  # nft caps comments at 128 bytes


@dataclass(frozen=True)
class SetDef:
    name: str
    type: tuple[str, ...]
    interval: bool = False
    comment: str = ""
    elements: Elements = frozenset()

    def header(self) -> tuple[Any, ...]:
        return (self.type, self.interval)


@dataclass(frozen=True)
class MapDef:
    """A verdict map: key → chain to jump to."""

    name: str
    type: str
    elements: tuple[tuple[str, str], ...] = ()  # sorted (key, chain)


@dataclass(frozen=True)
class Hook:
    hook: str  # forward | input
    priority: int = 0


@dataclass(frozen=True)
class ChainDef:
    name: str
    rules: tuple[RuleBody, ...] = ()
    hook: Hook | None = None
    digest: str = ""
    # Read back from the kernel: its rules as listed, in the backend's canonical form, so a
    # rule inserted, changed or removed anywhere in the chain is seen, not only the digest
    # in the last rule's comment. None for chains we built (desired, believed).
    listed: tuple[Any, ...] | None = None
    # Read back from a backend whose hook is per IP family (iptables: a jump from FORWARD or
    # INPUT in each of iptables and ip6tables): the families that do jump here. None when
    # not known that way (chains we built; nftables, whose inet chains hook both at once).
    hooked_families: frozenset[int] | None = None
    # Each rule's JSON, when the builder passed it to ChainDef.build (the last one unsealed).
    keys: tuple[str, ...] | None = field(default=None, compare=False, repr=False)
    # Steps that may stand in any order (NetworkPolicy allow rules: each one returns, none
    # excludes another), just before the chain's last step: (the index of their first rule,
    # each step's number of rules). The kernel may hold them in another order (a policy's
    # rules appended as it comes) and still hold this chain.
    free: tuple[int, tuple[int, ...]] | None = field(default=None, compare=False)
    # Read back from nftables: each listed rule's handle, in order. Not part of what it is.
    handles: tuple[int, ...] | None = field(default=None, compare=False)

    @staticmethod
    def build(name: str, rules: list[RuleBody], hook: Hook | None = None, keys: list[str] | None = None,
              free: tuple[int, tuple[int, ...]] | None = None) -> ChainDef:
        """Seal the chain: the digest of its rules goes into the last rule's comment. (The
        digest is of `json.dumps([name, hook, rules], sort_keys=True)`, put together from
        each rule's own JSON, which the chain keeps as its `keys`; a caller that has them
        already passes them, and only then does the chain keep them: the nftables renderer's
        in-place edits compare them, and they are shared with its render cache.)"""
        given = keys is not None
        if keys is None:
            keys = [json.dumps(r, sort_keys=True) for r in rules]
        head = json.dumps([name, hook and (hook.hook, hook.priority)], sort_keys=True)[:-1]
        payload = f"{head}, [{', '.join(keys)}]]"
        digest = hashlib.sha256(payload.encode()).hexdigest()[:12]
        sealed = list(rules)
        if sealed:
            last = RuleBody(**sealed[-1])
            last["comment"] = (last.get("comment", "")[: COMMENT_MAX - 16] + f" [{digest}]").strip()
            sealed[-1] = last
        return ChainDef(name, tuple(sealed), hook, digest, keys=tuple(keys) if given else None, free=free)


@dataclass
class Ruleset:
    """Mutable container of immutable objects: cheap to shallow-copy and to diff by name."""

    sets: dict[str, SetDef] = field(default_factory=dict)
    maps: dict[str, MapDef] = field(default_factory=dict)
    chains: dict[str, ChainDef] = field(default_factory=dict)

    def copy(self) -> Ruleset:
        """New name → object maps over the same objects (live element sets stay shared:
        see LiveElements)."""
        return Ruleset(dict(self.sets), dict(self.maps), dict(self.chains))

    def same_as(self, other: Ruleset) -> bool:
        """Equal as the kernel sees it: chains by digest, sets and maps by content."""
        return (
            self.sets == other.sets
            and self.maps == other.maps
            and {n: (c.hook, c.digest) for n, c in self.chains.items()}
            == {n: (c.hook, c.digest) for n, c in other.chains.items()}
        )


def differences(a: Ruleset, b: Ruleset) -> list[str]:
    """What differs between two rulesets as `same_as` compares them, by name (for logs)."""
    out = [f"set {n}" for n in sorted(set(a.sets) | set(b.sets)) if a.sets.get(n) != b.sets.get(n)]
    out += [f"map {n}" for n in sorted(set(a.maps) | set(b.maps)) if a.maps.get(n) != b.maps.get(n)]
    chain = {n: (c.hook, c.digest) for n, c in a.chains.items()}, {n: (c.hook, c.digest) for n, c in b.chains.items()}
    return out + [f"chain {n}" for n in sorted(set(chain[0]) | set(chain[1])) if chain[0].get(n) != chain[1].get(n)]


@dataclass
class Touched(SetChangeLog[str, Elem]):
    """Names changed in desired since the last sync; sets carry element deltas or were
    replaced whole (then compared whole)."""

    maps: set[str] = field(default_factory=set)
    chains: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.sets or self.maps or self.chains)

    def update(self, later: Touched) -> None:
        self.maps |= later.maps
        self.chains |= later.chains
        self.merge_sets(later)


def names_to_compare(actual: Ruleset, desired: Ruleset, touched: Touched | None) -> tuple[list[str], list[str], list[str]]:
    """The sets, maps and chains a diff looks at: every name on either side (a full sync),
    or only those `touched` since the last sync (a partial one: the rest is unchanged)."""
    def pick(a: dict[str, Any], b: dict[str, Any], only: set[str] | None) -> list[str]:
        return sorted(set(a) | set(b) if only is None else only)

    if touched is None:
        return pick(actual.sets, desired.sets, None), pick(actual.maps, desired.maps, None), pick(actual.chains, desired.chains, None)
    return sorted(touched.sets), sorted(touched.maps), sorted(touched.chains)
