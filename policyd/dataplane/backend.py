"""The kernel edge every backend implements (nftables, iptables + ipset)."""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from typing import Any, Protocol, TypeVar

from .config import RenderConfig
from .drift import Drift
from .objects import Ruleset
from .ops import Plan
from .render import Renderer


class ApplyError(Exception):
    """The kernel refused a transaction; nothing of it was applied."""


class NotOwned(Exception):
    """A table or chain of that name exists but does not carry policyd's mark: another
    program's, which policyd never removes."""


# policyd's ownership mark, on everything `policyd cleanup` may remove: the nftables table's
# comment; in iptables, the comment of the first rule of policyd's base chains.
OWNER_MARK = "managed by policyd, policyd cleanup removes it"


class Transaction(Protocol):
    """One batch for the kernel. `ops` counts commands and elements, the unit of kernel work;
    an empty transaction is falsy."""

    ops: int

    def __bool__(self) -> bool: ...


Tx = TypeVar("Tx", bound=Transaction)
TxOut = TypeVar("TxOut", bound=Transaction, covariant=True)  # a dialect only makes transactions


class Dialect(Protocol[TxOut]):
    """How a backend writes objects and plans down: pure, no kernel (what `policyd render`
    needs). Generic over its own transaction type: only its `spell` makes what its
    backend's `apply` takes."""

    table: str
    supports_json: bool  # whether `text` has a JSON form (`policyd render -o json`)

    def renderer(self, cfg: RenderConfig) -> Renderer:
        """The one renderer, with this backend's layout."""

    def spell(self, plan: Plan) -> TxOut:
        """A plan (dataplane.ops) → one batch in this backend's syntax."""

    def describe(self) -> str:
        """What policyd owns, for humans: `table inet policyd`."""

    def text(self, ruleset: Ruleset, as_json: bool = False) -> str:
        """The whole ruleset as this backend's tools would take it from an empty kernel
        (nft: its listing, or with `as_json` the libnftables transaction; iptables: the ipset
        and restore input)."""


class Backend(Dialect[Tx], Protocol[Tx]):
    """A dialect bound to a kernel: reads, checks and applies."""

    def read(self, elements: bool = True) -> Ruleset | None:
        """What the kernel holds of ours (typed, totally: what cannot be read comes back as
        something no desired object equals); None when there is nothing. Without `elements`,
        sets and maps may come back empty (a terse listing)."""

    def check(self, believed: Ruleset, elements: bool = False, pending: AbstractSet[str] = frozenset()) -> list[Drift]:
        """How the kernel differs from what policyd last wrote, found cheaply (no peer-set
        elements; rules or digests): the frequent drift check, which triggers a full sync.
        `elements`: peer sets' elements too, except those of `pending` sets (changes of ours
        not yet written)."""

    def names_writer(self) -> Any:
        """What writes addresses learned for domainNames peers into their sets, with their
        timeouts (names.learner.Writer), in the caller's network namespace."""

    def generation(self) -> int | None:
        """A number the kernel moves on every change to its rulesets, anyone's (nftables:
        the namespace's ruleset generation), read without listing anything; None where the
        kernel keeps none (iptables) or it cannot be read."""

    def commits(self, tx: Tx) -> int:
        """By how much `apply(tx)` moves `generation()` when nothing else changes the kernel."""

    def apply(self, tx: Tx) -> None:
        """Run the transaction atomically, or raise ApplyError having changed nothing.
        A backend that needs more than one kernel batch (iptables: ipset, then each family)
        may leave the earlier batches applied when a later one fails: it then raises
        ApplyError all the same, and the caller, which no longer knows what the kernel
        holds, reads it all back (the next sync is full)."""

    def delete_table(self) -> bool:
        """Remove what policyd owns (and nothing else); False when there was nothing. Raises
        NotOwned, removing nothing, when objects of that name lack policyd's mark."""

    @property
    def leftovers(self) -> int:
        """Objects the kernel refused to remove since start (iptables: ipsets still "in
        use"); each is retried by the next full resync."""

    def rule_counters(self) -> list[tuple[str, str, int, int]]:
        """(chain, rule id, packets, bytes) of the pod chains' counting rules, read without set
        elements (RenderConfig.counters; iptables counts every rule anyway)."""

    def listing(self) -> str:
        """What the kernel holds of ours as its tools print it (`nft list table`;
        iptables-save of both families and `ipset save`), without counters or timestamps:
        for people and for tests that compare two states."""


AnyBackend = Backend[Any]  # a backend chosen at run time (nftables or iptables)
AnyDialect = Dialect[Any]
