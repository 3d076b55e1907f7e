"""The desired ruleset, kept up to date incrementally from compiler changes (pure).

Each local pod contributes chains and entries of the dispatch maps and anti-spoofing
sets; each live set spec contributes one set per address family. An update replaces one
pod's or one spec's contribution and reports the names it touched, so the diff compares
only those.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..compile.changes import SetDelta
from ..compile.engine import Compiler
from ..compile.plan import Entry, SetSpec
from ..model.objects import IPAddress, PodKey
from .config import RenderConfig, family_sets
from .objects import Elem, LiveElements, Ruleset, Touched
from .render import PodObjects, Renderer

InterfaceOf = Callable[[PodKey, tuple[IPAddress, ...]], "str | None"]  # pod → its host-side interface


class DesiredState:
    def __init__(self, cfg: RenderConfig, renderer: Renderer) -> None:
        self.cfg = cfg
        self.renderer = renderer
        self.ruleset = Ruleset()
        self.pods: dict[str, PodObjects] = {}
        self._spec_sets: dict[SetSpec, list[str]] = {}
        self._owners: dict[tuple[str, Any], dict[str, Any]] = {}  # (map/set, key) → pod → value
        sets, maps, chains = renderer.skeleton()
        for s in sets:
            self.ruleset.sets[s.name] = s
        for m in maps:
            self.ruleset.maps[m.name] = m
        for c in chains:
            self.ruleset.chains[c.name] = c
        self.skeleton = Touched(sets={s.name for s in sets}, maps={m.name for m in maps}, chains={c.name for c in chains})

    def update_set(self, spec: SetSpec, compiler: Compiler, delta: SetDelta[Entry] | None = None) -> Touched:
        """With `delta` (the spec existed before and still does), O(size of the delta):
        the element set is updated in place. Otherwise the spec's sets are rebuilt whole."""
        t = Touched()
        if delta is not None and spec in self._spec_sets and spec in compiler.sets:
            for fam, name in zip(family_sets(spec), self._spec_sets[spec], strict=True):
                added, removed = self.renderer.elements(spec, delta.added, fam), self.renderer.elements(spec, delta.removed, fam)
                if added or removed:
                    live = self.ruleset.sets[name].elements
                    assert isinstance(live, set), "desired's sets are live (LiveElements)"
                    live -= removed
                    live |= added
                    t.set_delta(name, added, removed)
            return t
        old = self._spec_sets.pop(spec, [])
        if spec in compiler.sets:
            defs = self.renderer.set_defs(spec, compiler.set_entries(spec))
            self._spec_sets[spec] = [d.name for d in defs]
            for d in defs:
                self.ruleset.sets[d.name] = replace(d, elements=LiveElements(d.elements))  # deltas apply in place
                t.set_replaced(d.name)
        for name in old:
            if name not in self._spec_sets.get(spec, []):
                self.ruleset.sets.pop(name, None)
                t.set_replaced(name)
        return t

    def update_pod(self, key: PodKey, compiler: Compiler, interface_of: InterfaceOf) -> Touched:
        t = Touched()
        old = self.pods.pop(key, None)
        plan = compiler.plans.get(key)
        new = self.renderer.pod(plan, interface_of(key, plan.ips)) if plan is not None else None
        if old is not None:
            for c in old.chains:
                self.ruleset.chains.pop(c.name, None)
                t.chains.add(c.name)
        if new is not None:
            self.pods[key] = new
            for c in new.chains:
                self.ruleset.chains[c.name] = c
                t.chains.add(c.name)
        self._replace_entries(key, old, new, t)
        return t

    def _replace_entries(self, key: str, old: PodObjects | None, new: PodObjects | None, t: Touched) -> None:
        """Swap one pod's contributions to the dispatch maps and spoofing sets. Two local
        pods may briefly claim the same address or interface (reuse after a deletion): each
        entry remembers its contributors; a map key goes to the smallest pod key, a set
        element stays while anyone contributes it."""
        affected: set[tuple[str, Any]] = set()
        for src, adding in ((old, False), (new, True)):
            if src is None:
                continue
            for name, k, chain in src.map_entries:
                self._contrib(name, k, key, chain if adding else None)
                affected.add((name, k))
            for name, e in src.spoof_entries:
                self._contrib(name, e, key, True if adding else None)
                affected.add((name, e))
        changed_maps: dict[str, dict[str, str]] = {}
        changed_sets: dict[str, set[Elem]] = {}
        for name, k in affected:
            owners = self._owners.get((name, k))
            if name in self.ruleset.maps:
                cur = changed_maps.setdefault(name, dict(self.ruleset.maps[name].elements))
                if owners:
                    cur[k] = owners[min(owners)]
                else:
                    cur.pop(k, None)
            else:
                cur_s = changed_sets.setdefault(name, set(self.ruleset.sets[name].elements))
                if owners:
                    cur_s.add(k)
                else:
                    cur_s.discard(k)
        for name, elems in changed_maps.items():
            m = self.ruleset.maps[name]
            if dict(m.elements) != elems:
                self.ruleset.maps[name] = replace(m, elements=tuple(sorted(elems.items())))
                t.maps.add(name)
        for name, es in changed_sets.items():
            cur_def = self.ruleset.sets[name]
            if cur_def.elements != es:
                self.ruleset.sets[name] = replace(cur_def, elements=frozenset(es))
                t.set_replaced(name)

    def _contrib(self, name: str, k: Any, pod: str, value: Any) -> None:
        owners = self._owners.setdefault((name, k), {})
        if value is None:
            owners.pop(pod, None)
            if not owners:
                del self._owners[(name, k)]
        else:
            owners[pod] = value
