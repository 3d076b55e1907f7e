"""compile → render → diff → apply, with "desired" tracked against "what the kernel holds".

Partial syncs by default: only names touched since the last sync are compared. A full sync
reads the table back and compares everything, which adopts a table left by a previous run
and repairs drift:

* first sync and after any failure: the listing includes set and map elements, since we do
  not know what the kernel holds;
* requested (periodic) resyncs: a terse listing (chains with their digests, set and map
  definitions, no elements), which stays cheap with 100k-element sets; elements are taken
  as believed. Anything unknown in the kernel falls back to the complete listing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ..compile.engine import Compiler
from ..dataplane.backend import ApplyError, Backend
from ..dataplane.config import DispatchMode, RenderConfig
from ..dataplane.desired import DesiredState
from ..dataplane.objects import Ruleset, Touched
from .interfaces import RouteInterfaces

log = logging.getLogger("policyd.sync")


@dataclass(frozen=True)
class SyncResult:
    full: bool
    ops: int
    seconds: float
    pending_interfaces: int = 0


class Syncer:
    def __init__(self, compiler: Compiler, backend: Backend, cfg: RenderConfig, interfaces: RouteInterfaces | None = None) -> None:
        self.compiler = compiler
        self.backend = backend
        self.cfg = cfg
        self.desired = DesiredState(cfg, backend.renderer(cfg))
        self.interfaces = interfaces or RouteInterfaces()
        self.believed: Ruleset | None = None  # None: unknown, the next sync is full
        self.touched = Touched()
        self.touched.update(self.desired.skeleton)
        self.pending: set[str] = set()  # local pods whose interface is not known yet
        self._routes_fresh = False
        # Whatever the compiler already holds is new to us.
        compiler.take_changes()
        self._seed = (set(compiler.plans), set(compiler.sets))

    def _interface(self, key: str, ips: tuple) -> str | None:
        if self.cfg.mode is not DispatchMode.INTERFACE:
            return None
        if not self._routes_fresh:  # once per absorb: an address may now lead elsewhere
            self.interfaces.refresh()
            self._routes_fresh = True
        dev = self.interfaces(key, ips)
        if dev is None:
            self.pending.add(key)
        else:
            self.pending.discard(key)
        return dev

    def absorb(self) -> None:
        """Fold the compiler's changes (and pods still waiting for an interface) into desired."""
        changes = self.compiler.take_changes()
        self._routes_fresh = False
        if self._seed is not None:
            changes.pods |= self._seed[0]
            for spec in self._seed[1]:
                changes.set_replaced(spec)
            self._seed = None
        for spec in changes.sets:
            self.touched.update(self.desired.update_set(spec, self.compiler, changes.deltas.get(spec)))
        for key in changes.pods | set(self.pending):
            self.touched.update(self.desired.update_pod(key, self.compiler, self._interface))

    def _read_terse(self) -> Ruleset | None:
        """The kernel's table without elements, completed with the believed elements; None
        when the kernel holds a set or map we do not know (then read it all)."""
        assert self.believed is not None
        rs = self.backend.read(elements=False)
        if rs is None:
            return None
        for name, s in rs.sets.items():
            b = self.believed.sets.get(name)
            if b is None or b.header() != s.header():
                return None
            rs.sets[name] = b
        for name, m in rs.maps.items():
            bm = self.believed.maps.get(name)
            if bm is None or bm.type != m.type:
                return None
            rs.maps[name] = bm
        return rs

    def sync(self, full: bool = False) -> SyncResult:
        start = time.perf_counter()
        self.absorb()
        full = full or self.believed is None
        if full:
            actual = self._read_terse() if self.believed is not None else None
            if actual is None:
                actual = self.backend.read()
                tx = self.backend.diff(actual, self.desired.ruleset, deltas={})
            else:
                tx = self.backend.diff(actual, self.desired.ruleset, deltas=self.touched.deltas)
        else:
            if not self.touched:
                return SyncResult(False, 0, time.perf_counter() - start, len(self.pending))
            tx = self.backend.diff(self.believed, self.desired.ruleset, self.touched)
        try:
            self.backend.apply(tx)
        except ApplyError:
            self.believed = None  # we no longer know what the kernel holds
            raise
        self.believed = self.desired.ruleset.copy()
        self.touched = Touched()
        result = SyncResult(full, tx.ops, time.perf_counter() - start, len(self.pending))
        if tx.ops:
            log.debug("sync %s: %d operations in %.1f ms", "full" if full else "partial", tx.ops, result.seconds * 1e3)
        return result
