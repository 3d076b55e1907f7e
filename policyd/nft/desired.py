"""The desired ruleset, kept up to date incrementally from compiler changes (pure).

Each local pod contributes chains and entries of the dispatch maps and anti-spoofing
sets; each live set spec contributes one set per address family. An update replaces one
pod's or one spec's contribution and reports the names it touched, so the diff compares
only those.
"""

from __future__ import annotations

from typing import Callable

from ..compile.engine import Compiler
from ..compile.plan import SetSpec
from .diff import Touched
from .render import PodObjects, RenderConfig, render_pod, render_set, render_skeleton
from .ruleset import Elem, MapDef, Ruleset, SetDef

InterfaceOf = Callable[[str, tuple], "str | None"]


class DesiredState:
    def __init__(self, cfg: RenderConfig) -> None:
        self.cfg = cfg
        self.ruleset = Ruleset()
        self.pods: dict[str, PodObjects] = {}
        self._spec_sets: dict[SetSpec, list[str]] = {}
        sets, maps, chains = render_skeleton(cfg)
        for s in sets:
            self.ruleset.sets[s.name] = s
        for m in maps:
            self.ruleset.maps[m.name] = m
        for c in chains:
            self.ruleset.chains[c.name] = c
        self.skeleton = Touched({s.name for s in sets}, {m.name for m in maps}, {c.name for c in chains})

    def update_set(self, spec: SetSpec, compiler: Compiler) -> Touched:
        t = Touched()
        old = self._spec_sets.pop(spec, [])
        if spec in compiler.sets:
            defs = render_set(spec, compiler.set_entries(spec))
            self._spec_sets[spec] = [d.name for d in defs]
            for d in defs:
                self.ruleset.sets[d.name] = d
                t.sets.add(d.name)
        for name in old:
            if name not in self._spec_sets.get(spec, []):
                self.ruleset.sets.pop(name, None)
                t.sets.add(name)
        return t

    def update_pod(self, key: str, compiler: Compiler, interface_of: InterfaceOf) -> Touched:
        t = Touched()
        old = self.pods.pop(key, None)
        plan = compiler.plans.get(key)
        new = render_pod(plan, self.cfg, interface_of(key, plan.ips)) if plan is not None else None
        if old is not None:
            for c in old.chains:
                self.ruleset.chains.pop(c.name, None)
                t.chains.add(c.name)
        if new is not None:
            self.pods[key] = new
            for c in new.chains:
                self.ruleset.chains[c.name] = c
                t.chains.add(c.name)
        self._replace_entries(old, new, t)
        return t

    def _replace_entries(self, old: PodObjects | None, new: PodObjects | None, t: Touched) -> None:
        maps: dict[str, tuple[list, list]] = {}
        for src, idx in ((old, 0), (new, 1)):
            for m, k, c in (src.map_entries if src else ()):
                maps.setdefault(m, ([], []))[idx].append((k, c))
        for name, (gone, added) in maps.items():
            cur = dict(self.ruleset.maps[name].elements)
            for k, c in gone:
                if cur.get(k) == c:
                    del cur[k]
            cur.update(added)
            self.ruleset.maps[name] = MapDef(name, self.ruleset.maps[name].type, tuple(sorted(cur.items())))
            t.maps.add(name)
        sets: dict[str, tuple[list[Elem], list[Elem]]] = {}
        for src, idx in ((old, 0), (new, 1)):
            for s, e in (src.spoof_entries if src else ()):
                sets.setdefault(s, ([], []))[idx].append(e)
        for name, (gone_e, added_e) in sets.items():
            cur_s = self.ruleset.sets[name]
            elems = (cur_s.elements - frozenset(gone_e)) | frozenset(added_e)
            self.ruleset.sets[name] = SetDef(cur_s.name, cur_s.type, cur_s.interval, cur_s.comment, elems)
            t.sets.add(name)
