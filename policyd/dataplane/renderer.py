"""What a backend's renderer provides to the desired state (pure, no kernel)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol

from ..compile.plan import Entry, PodPlan, SetSpec
from .objects import ChainDef, Elem, MapDef, SetDef


@dataclass(frozen=True)
class PodObjects:
    """What one local pod contributes: its chains and its entries in the shared maps/sets."""

    chains: tuple[ChainDef, ...]
    map_entries: tuple[tuple[str, str, str], ...]  # (map name, key, chain)
    spoof_entries: tuple[tuple[str, Elem], ...]  # (set name, element)


class Renderer(Protocol):
    """Plan → dataplane objects for one backend and configuration. Set names must depend
    on the spec only (content-addressed), and `set_defs` must list one set per family of
    `family_sets(spec)`, in that order."""

    def skeleton(self) -> tuple[list[SetDef], list[MapDef], list[ChainDef]]:
        """The objects every node has, whatever the policies."""

    def pod(self, plan: PodPlan, ifname: str | None) -> PodObjects: ...

    def set_defs(self, spec: SetSpec, entries: Iterable[Entry]) -> list[SetDef]: ...

    def elements(self, spec: SetSpec, entries: Iterable[Entry], family: int) -> frozenset[Elem]: ...
