"""Kernel rules as typed data, the same for every backend.

A `Rule` is a closed vocabulary of matches (this module's `Match` types), a verdict, a log
and a counter option, a comment, and one stable `id`: a hash of everything the rule is
(its matches, verdict, options, family, comment) and where it came from (`Origin`: its
chain's role, its policy rule, its cause). That
one id names the kernel rule everywhere: it ends the rule's comment (`(r:<id>)`), it is the
NFLOG prefix of a log rule (`pd-<id>`), what rule counters are keyed by, what an in-place
chain edit deletes and keeps, and what a chain's digest is made of.

Each backend spells rules (libnftables JSON, iptables-restore lines) and parses its
kernel's listing back into them, so "the kernel holds this rule" is equality of two Rules.
Matches are kept in one canonical order (`RANK`), whichever order a backend lists them in.
Where a rule came from (`Origin`: its policy rule for the counters, its cause for the drop
log) is not part of what the kernel holds and not compared.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .droplog import DropCause


class Side(str, Enum):
    """Which end of a packet a match looks at: the source address or input interface, or
    the destination address or output interface."""

    SRC = "src"
    DST = "dst"


# --- matches -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CtState:
    """`ct state established,related` (states sorted)."""

    states: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CtMark:
    """`ct mark & mark == mark`: the connection carries these mark bits (reconcile/revoke.py
    sets them on connections a policy change revoked)."""

    mark: int


@dataclass(frozen=True, slots=True)
class Icmp6Types:
    """ICMPv6 of these numeric types (neighbour discovery); implies IPv6."""

    types: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class IfacePrefix:
    """The input (SRC) or output (DST) interface's name starts with `prefix`."""

    side: Side
    prefix: str


@dataclass(frozen=True, slots=True)
class IfaceSet:
    """The input (SRC) or output (DST) interface is (or, negated, is not) in a set of
    interfaces."""

    side: Side
    set: str
    negate: bool = False


@dataclass(frozen=True, slots=True)
class NetMatch:
    """The address on `side` is (or, negated, is not) in a prefix."""

    side: Side
    family: int
    prefix: str  # `fe80::/10`
    negate: bool = False


@dataclass(frozen=True, slots=True)
class IfaceAddrSet:
    """(input interface, source address) is (or, negated, is not) in a set of pairs: the
    anti-spoofing check."""

    family: int
    set: str
    negate: bool = False


@dataclass(frozen=True, slots=True)
class AddrSet:
    """The address on `side` is in a set of addresses or prefixes."""

    side: Side
    family: int
    set: str


@dataclass(frozen=True, slots=True)
class AddrPortSet:
    """(destination address, protocol, destination port) is in a set: an egress named port
    resolved per destination pod."""

    side: Side
    family: int
    set: str


@dataclass(frozen=True, slots=True)
class CtDirection:
    """`ct direction reply` (or original): which way of a tracked connection the packet goes."""

    direction: str  # reply | original


@dataclass(frozen=True, slots=True)
class SrcPort:
    """The transport protocol and its source port (a DNS server's answers come from 53)."""

    proto: str  # tcp, udp
    port: int


Port = tuple[int, int]  # first, last (equal for one port)


@dataclass(frozen=True, slots=True)
class L4:
    """The transport protocol, and with `ports` its destination port in one of these ranges
    (sorted; None: any port)."""

    proto: str  # tcp, udp, sctp
    ports: tuple[Port, ...] | None = None


Match = CtMark | CtState | CtDirection | Icmp6Types | IfacePrefix | IfaceSet | NetMatch | IfaceAddrSet | AddrSet | AddrPortSet | L4 | SrcPort
# The canonical order of a rule's matches: the order the nftables renderer has always
# written them in, whatever order a listing shows.
RANK: dict[type, int] = {CtMark: -1, CtState: 0, CtDirection: 1, Icmp6Types: 2, IfacePrefix: 3, IfaceSet: 4, NetMatch: 5, IfaceAddrSet: 6,
                         AddrSet: 7, AddrPortSet: 8, L4: 9, SrcPort: 10}


def ordered(matches: list[Match] | tuple[Match, ...]) -> tuple[Match, ...]:
    return tuple(sorted(matches, key=lambda m: RANK[type(m)]))


def implied_family(matches: tuple[Match, ...]) -> int:
    """The address family a rule's matches imply (0: none)."""
    for m in matches:
        if isinstance(m, (NetMatch, IfaceAddrSet, AddrSet, AddrPortSet)):
            return m.family
        if isinstance(m, Icmp6Types):
            return 6
    return 0


# --- verdicts and options ---------------------------------------------------------------


class Kind(str, Enum):
    ACCEPT = "accept"
    DROP = "drop"
    RETURN = "return"
    JUMP = "jump"  # to `target`, which returns here
    GOTO = "goto"  # to `target`, whose return goes to this chain's caller
    DISPATCH = "dispatch"  # through the verdict map `target`, keyed by `side` (and `family`; 0: the interface)
    QUEUE = "queue"  # to the agent's NFQUEUE (the rule's `queue` says which, and whether it is bypassed when no one listens)


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: Kind
    target: str = ""
    side: Side | None = None
    family: int = 0


ACCEPT, DROP, RETURN = Verdict(Kind.ACCEPT), Verdict(Kind.DROP), Verdict(Kind.RETURN)


@dataclass(frozen=True, slots=True)
class Log:
    """A rate-limited NFLOG to `group`; the prefix is `pd-<rule id>`."""

    group: int
    rate: int  # packets per second
    burst: int


LOG_PREFIX = "pd-"


@dataclass(frozen=True, slots=True)
class Queue:
    """An NFQUEUE verdict's queue number, and whether packets pass (bypass) when no program
    listens or the queue is full (fail open) or are dropped (fail closed)."""

    num: int
    bypass: bool


@dataclass(frozen=True, order=True)
class RuleKey:
    """One policy rule, as the metrics label it: `kind` allow (a NetworkPolicy rule: policy
    is its name, rule its index), tier (a ClusterNetworkPolicy rule: policy is its name, rule
    the label's `ingress[0] from[1] Deny` part), drop (a pod's isolation: namespace is the
    pod's, policy lists the isolating policies as ns/name, rule is empty), audit (an
    audit-mode policy's rule that would allow) or audit-drop (what audit-mode policies would
    drop, like drop)."""

    kind: str
    namespace: str
    policy: str
    direction: str
    rule: str

    def describe(self) -> str:
        if self.kind == "allow":
            return f"{self.namespace}/{self.policy} {self.direction}[{self.rule}]"
        if self.kind == "audit":
            return f"{self.namespace}/{self.policy} {self.direction}[{self.rule}] (audit mode, would allow)"
        if self.kind == "drop":
            return f"{self.direction} isolation of {self.namespace} pods by {self.policy}"
        if self.kind == "audit-drop":
            return f"what audit-mode {self.policy} would drop of {self.namespace} pods' {self.direction} (not enforced)"
        return f"{self.policy} {self.rule}"


@dataclass(frozen=True)
class Origin:
    """Where a rule came from: its chain's role (a base chain's hook, or a pod and direction:
    the same policy rule in two pods' chains is two kernel rules, with two ids), the policy
    rule its counter counts for (None: counted apart), and the cause a drop log record names."""

    role: str = ""
    key: RuleKey | None = None
    cause: DropCause | None = None


# --- the rule -------------------------------------------------------------------------------

ID_LENGTH = 16
ID_RE = re.compile(r" ?\(r:([0-9a-f]{16})\)$")


@dataclass(frozen=True, slots=True)
class Rule:
    """One kernel rule. `verdict` None: a rule that only logs (and goes on); `family` 0: both
    families (4 or 6: only that one, as its matches imply or the rule says); `comment` the
    text before the id tag, already in the backend's comment alphabet and length."""

    matches: tuple[Match, ...]
    verdict: Verdict | None
    family: int = 0
    log: Log | None = None
    counter: bool = False
    comment: str = ""
    id: str = ""
    origin: Origin | None = field(default=None, compare=False, hash=False)
    # A QUEUE verdict's queue (nftables lists the xtables target without its options: the
    # comment, which names them, and the id stand for them in comparisons).
    queue: Queue | None = field(default=None, compare=False, hash=False)

    @staticmethod
    def build(matches: list[Match] | tuple[Match, ...], verdict: Verdict | None, comment: str, family: int = 0,
              log: Log | None = None, counter: bool = False, origin: Origin | None = None, queue: Queue | None = None) -> Rule:
        """Matches put in canonical order, the family made explicit where the matches imply
        one, and the id computed."""
        ms = ordered(matches)
        fam = family or implied_family(ms)
        rid = rule_id(ms, verdict, fam, log, counter, comment, origin if queue is None else (origin, queue))
        return Rule(ms, verdict, fam, log, counter, comment, rid, origin, queue)

    @property
    def tagged_comment(self) -> str:
        """The comment as the kernel holds it: the text and the id."""
        return f"{self.comment} (r:{self.id})" if self.comment else f"(r:{self.id})"

    @property
    def log_prefix(self) -> str:
        return LOG_PREFIX + self.id


def rule_id(matches: tuple[Match, ...], verdict: Verdict | None, family: int, log: Log | None, counter: bool, comment: str,
            origin: object = None) -> str:
    """The hash of what the rule is and where it came from (its role, policy rule and cause)."""
    content = repr((matches, verdict, family, log, counter, comment, origin))
    return hashlib.blake2b(content.encode(), digest_size=ID_LENGTH // 2).hexdigest()


def split_comment(text: str) -> tuple[str, str]:
    """A listed comment → (its text, the id in its tag; "" when it has none)."""
    m = ID_RE.search(text)
    return (text[:m.start()], m.group(1)) if m else (text, "")


class Unknown:
    """A listed rule a backend cannot read as a Rule (someone else's, or one of ours changed
    into a shape policyd never writes): it never equals a desired rule."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Unknown) and other.text == self.text

    def __hash__(self) -> int:
        return hash(("unknown", self.text))

    def __repr__(self) -> str:
        return f"Unknown({self.text!r})"


AnyRule = Rule | Unknown
