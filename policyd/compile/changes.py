"""Change logs of sets, shared by the compiler (sets by spec) and the desired state (sets
by name): a delta of members per set, or the set replaced whole."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class SetDelta(Generic[T]):
    """Members that appeared in or left a set, net since it was last taken: an entry that
    comes and goes again cancels out, so the delta applies cleanly to the older state."""

    added: set[T] = field(default_factory=set)
    removed: set[T] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)

    def note(self, added: Iterable[T], removed: Iterable[T]) -> None:
        for e in added:
            if e in self.removed:
                self.removed.discard(e)
            else:
                self.added.add(e)
        for e in removed:
            if e in self.added:
                self.added.discard(e)
            else:
                self.removed.add(e)


K = TypeVar("K")


@dataclass
class SetChangeLog(Generic[K, T]):
    """Which sets changed, and how: a set either has a delta of members (it existed before
    and still does) or was replaced whole (created, deleted, re-rendered), which wins over
    any delta since. Shared by the compiler (sets by spec) and the renderer (by name)."""

    sets: set[K] = field(default_factory=set)
    deltas: dict[K, SetDelta[T]] = field(default_factory=dict)
    whole: set[K] = field(default_factory=set)

    def set_replaced(self, key: K) -> None:
        self.sets.add(key)
        self.deltas.pop(key, None)
        self.whole.add(key)

    def set_delta(self, key: K, added: Iterable[T], removed: Iterable[T]) -> None:
        self.sets.add(key)
        if key not in self.whole:
            self.deltas.setdefault(key, SetDelta()).note(added, removed)

    def merge_sets(self, later: SetChangeLog[K, T]) -> None:
        self.sets |= later.sets
        for key in later.whole:
            self.set_replaced(key)
        for key, d in later.deltas.items():
            self.set_delta(key, d.added, d.removed)
