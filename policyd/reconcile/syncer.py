"""compile → render → diff → apply, with "desired" tracked against "what the kernel holds".

Partial syncs by default: only names touched since the last sync are compared. A full sync
reads the table back and compares everything, which adopts a table left by a previous run
and repairs drift:

* a full sync reads everything (elements too) and compares chains rule by rule, in the
  kernel's normal form, so any rule inserted, changed or removed, any element added or
  removed, any object added or deleted is repaired; what differs from what we believed is
  reported as drift (`SyncResult.drift`);
* `check()` is the cheap look between syncs (names and rule counts from a terse listing for
  nftables, digests for iptables): the runner calls it every second and asks for a full
  sync when it finds drift.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from ..compile.engine import Compiler
from ..compile.plan import SetSpec
from ..dataplane.backend import AnyBackend, ApplyError
from ..dataplane.config import DispatchMode, RenderConfig
from ..dataplane.desired import DesiredState
from ..dataplane.drift import Drift, find_drift
from ..dataplane.objects import Ruleset, Touched
from ..model.objects import IPAddress, PodKey
from .interfaces import RouteInterfaces

log = logging.getLogger("policyd.sync")


@dataclass(frozen=True)
class SyncResult:
    full: bool
    ops: int
    seconds: float
    pending_interfaces: int = 0
    drift: tuple[Drift, ...] = ()  # what a full resync found changed behind our back (and repaired)


class Syncer:
    def __init__(self, compiler: Compiler, backend: AnyBackend, cfg: RenderConfig, interfaces: RouteInterfaces | None = None) -> None:
        self.compiler = compiler
        self.backend = backend
        self.cfg = cfg
        self.desired = DesiredState(cfg, backend.renderer(cfg))
        self.interfaces = interfaces or RouteInterfaces()
        self.believed: Ruleset | None = None  # None: unknown, the next sync is full
        # Held while the compiler's changes are folded into desired state (absorb): whoever
        # feeds the compiler from another thread holds it too. The kernel work after that
        # (read, diff, apply) needs no lock: only sync() touches desired and believed.
        self.lock = threading.Lock()
        self.touched = Touched()
        self.touched.update(self.desired.skeleton)
        self.pending: set[PodKey] = set()  # local pods whose interface is not known yet
        self._routes_fresh = False
        # Whatever the compiler already holds is new to us.
        compiler.take_changes()
        self._seed: tuple[set[PodKey], set[SetSpec]] | None = (set(compiler.plans), set(compiler.sets))

    def _interface(self, key: PodKey, ips: tuple[IPAddress, ...]) -> str | None:
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

    def check(self) -> list[Drift]:
        """The frequent, cheap drift check (names and rule counts, or digests): what differs
        from what we last wrote. Nothing when we do not know (the next sync is full anyway)."""
        if self.believed is None:
            return []
        return self.backend.check(self.believed)

    def sync(self, full: bool = False) -> SyncResult:
        start = time.perf_counter()
        with self.lock:
            self.absorb()
        full = full or self.believed is None
        drift: list[Drift] = []
        if full:
            # Everything, elements too, compared rule by rule: repairs any drift. What we
            # believed is compared first, to say what changed behind our back.
            actual = self.backend.read()
            if self.believed is not None:
                drift = find_drift(self.believed, actual, self.backend.chain_holds, True, self.backend.describe(),
                                   pending=set(self.touched.sets))
            tx = self.backend.diff(actual, self.desired.ruleset, deltas={})
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
        result = SyncResult(full, tx.ops, time.perf_counter() - start, len(self.pending), tuple(drift))
        for d in drift:
            log.warning("drift repaired: %s (changed in the kernel behind policyd's back)", d)
        if tx.ops:
            log.debug("sync %s: %d operations in %.1f ms", "full" if full else "partial", tx.ops, result.seconds * 1e3)
        return result
