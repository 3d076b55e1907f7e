"""The kernel objects policyd owns, as typed immutable data, the same for every backend.

A `Ruleset` is sets (with typed elements), dispatch maps (key → chain) and chains of typed
rules (`rules.Rule`). A chain we build carries a digest made of its rules' ids; a chain read
back from the kernel (`listed`) is compared rule by rule instead. Each backend spells these
objects in its own syntax and parses its kernel's listing back into them (totally: what it
cannot read becomes something that differs from anything desired, see FOREIGN_* and
`rules.Unknown`), so comparing what we want with what the kernel holds is equality here.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NamedTuple

from ..compile.changes import SetChangeLog
from .rules import AnyRule, Rule, Side, Unknown

# --- set elements ------------------------------------------------------------------------


class Prefix(NamedTuple):
    """A prefix longer than a host's (a host is its address, a str); `nomatch`: excepted
    (ipset's hash:net `nomatch`; nftables computes the intervals instead)."""

    addr: str
    len: int
    nomatch: bool = False


class AddrPort(NamedTuple):
    addr: str
    proto: str  # tcp, udp, sctp
    port: int


class IfaceAddr(NamedTuple):
    iface: str
    addr: str


class Foreign(NamedTuple):
    """An element of a shape policyd never writes, as listed: it differs from anything
    desired, and a set holding one is flushed and refilled in one transaction."""

    text: str


# An address (str), an interface name (str, in interface sets), or one of the above.
Elem = str | Prefix | AddrPort | IfaceAddr | Foreign

# A map entry whose verdict is not a jump to a chain (accept, drop, goto…) or whose key
# cannot be read has FOREIGN_TARGET, which no chain is named: the map is flushed and refilled.
FOREIGN_TARGET = ""


def is_foreign(e: Elem) -> bool:
    return type(e) is Foreign


# A set's elements are frozen, except in the live sets DesiredState owns and changes in
# place by each event's delta (O(delta), not O(set)). A Ruleset copied from desired (what
# the syncer believes after a sync) shares those live sets: it holds the names and headers
# as they were, and the elements as desired has them now, which the kernel holds too once
# the deltas are applied; element drift is found by the full resync, which reads the kernel.
LiveElements = set[Elem]
Elements = frozenset[Elem] | LiveElements


class SetKind(str, Enum):
    """What a set's elements are (each backend spells the type)."""

    ADDR = "addr"  # addresses
    ADDR_PORT = "addr-port"  # (address, protocol, port)
    PREFIX = "prefix"  # prefixes and addresses (an ipBlock)
    IFACE = "iface"  # interface names
    IFACE_ADDR = "iface-addr"  # (interface, address)


COMMENT_MAX = 120  # nft caps comments at 128 bytes


@dataclass(frozen=True)
class SetDef:
    name: str
    kind: SetKind
    family: int  # 4, 6; 0 for a set of interface names
    comment: str = field(default="", compare=False)  # for people (iptables keeps none)
    elements: Elements = frozenset()
    # Its elements are learned in the data path, each with a timeout (names/: the addresses
    # of domain names): policyd owns the set, never its elements, which it neither compares
    # nor changes (and which therefore outlive an agent restart).
    learned: bool = False

    def header(self) -> tuple[Any, ...]:
        return (self.kind, self.family, self.learned)


@dataclass(frozen=True)
class MapDef:
    """A dispatch map: key (an interface name, `family` 0, or an address) → chain to jump
    to, keyed by the packet's `side`."""

    name: str
    side: Side = field(compare=False)  # (the name says it: a listing shows only the key's type)
    family: int = 0
    elements: tuple[tuple[str, str], ...] = ()  # sorted (key, chain)


@dataclass(frozen=True)
class Hook:
    hook: str  # forward | input
    priority: int = 0
    policy: str = "accept"
    type: str = "filter"


# --- chains --------------------------------------------------------------------------------

# Steps that may stand in any order (NetworkPolicy allow rules: each returns, none excludes
# another), just before the chain's last step: (the index of their first rule, each step's
# number of rules).
Free = tuple[int, tuple[int, ...]]


@dataclass(frozen=True)
class ChainDef:
    name: str
    rules: tuple[AnyRule, ...] = ()
    hook: Hook | None = None
    # Of the rules' ids (a chain we build); "" for a chain read from the kernel (`listed`),
    # which is compared rule by rule.
    digest: str = ""
    listed: bool = False
    free: Free | None = field(default=None, compare=False)
    # Read back from a backend whose hook is per IP family (iptables: a jump first in FORWARD
    # or INPUT of each of iptables and ip6tables): the families that do jump here first.
    # None when not known that way (chains we built; nftables, whose inet chains hook both).
    hooked_families: frozenset[int] | None = None
    # The jumps of such a backend that stand elsewhere (not first, or a second one): one
    # family per jump, each deleted before the jump is put first again.
    stray_hooks: tuple[int, ...] = ()

    @staticmethod
    def build(name: str, rules: Iterable[Rule], hook: Hook | None = None, free: Free | None = None) -> ChainDef:
        rs = tuple(rules)
        return ChainDef(name, rs, hook, chain_digest(name, hook, (r.id for r in rs)), free=free)

    @staticmethod
    def read(name: str, rules: Iterable[AnyRule], hook: Hook | None = None, hooked_families: frozenset[int] | None = None,
             stray_hooks: tuple[int, ...] = ()) -> ChainDef:
        """A chain as a backend read it from the kernel."""
        return ChainDef(name, tuple(rules), hook, listed=True, hooked_families=hooked_families, stray_hooks=stray_hooks)

    def ids(self) -> tuple[str, ...]:
        return tuple(r.id if isinstance(r, Rule) else "" for r in self.rules)


def chain_digest(name: str, hook: Hook | None, ids: Iterable[str]) -> str:
    return hashlib.blake2b(repr((name, hook, tuple(ids))).encode(), digest_size=6).hexdigest()


def family_view(rules: Iterable[AnyRule], family: int) -> list[Any]:
    """The rules a packet of `family` meets, in order, each without its family (iptables
    lists a rule of both families once in each): a rule of the other family never matches
    that packet, so where it stands does not matter."""
    return [(r.matches, r.verdict, r.log, r.counter, r.comment, r.id) if isinstance(r, Rule) else r
            for r in rules if isinstance(r, Unknown) or r.family in (0, family)]


def chain_holds(have: ChainDef, want: ChainDef) -> bool:
    """Whether chain `have` (believed, or listed by the kernel) is `want`: by digest and hook
    for chains we built; listed ones rule by rule for each family, the order-free steps
    (`want.free`) there as many times each in any order."""
    if have.hook != want.hook:
        return False
    if not have.listed:
        return have.digest == want.digest
    if have.rules == want.rules:
        return True
    for fam in (4, 6):
        listed, wanted = family_view(have.rules, fam), family_view(want.rules, fam)
        if listed == wanted:
            continue
        if want.free is None or len(listed) != len(wanted):
            return False
        a = len(family_view(want.rules[:want.free[0]], fam))
        b = len(wanted) - len(family_view(want.rules[want.free[0] + sum(want.free[1]):], fam))
        if listed[:a] != wanted[:a] or listed[b:] != wanted[b:] or Counter(listed[a:b]) != Counter(wanted[a:b]):
            return False
    return True


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
        """Equal as the kernel sees it: sets and maps by content, chains by digest, or rule by
        rule where one of them was read from a kernel."""
        return (self.sets == other.sets and self.maps == other.maps and self.chains.keys() == other.chains.keys()
                and all(_same_chain(c, other.chains[n]) for n, c in self.chains.items()))


def _same_chain(a: ChainDef, b: ChainDef) -> bool:
    if a.listed or b.listed:
        return chain_holds(a, b) if a.listed else chain_holds(b, a)
    return (a.hook, a.digest) == (b.hook, b.digest)


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
