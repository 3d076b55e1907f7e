"""compile → render → diff → apply, with "desired" tracked against "what the kernel holds".

Partial syncs by default: only names touched since the last sync are compared. A full sync
reads the table back and compares everything, which adopts a table left by a previous run
and repairs drift:

* a full sync reads everything (elements too) and compares chains rule by rule, in the
  kernel's normal form, so any rule inserted, changed or removed, any element added or
  removed, any object added or deleted is repaired; what differs from what we believed is
  reported as drift (`SyncResult.drift`);
* `check()` is the cheap look between syncs (nftables: every rule from a terse listing and
  the elements of the verdict maps and the node's own sets; iptables: saved lines of both
  families and ipset entry counts; peer-set elements within a CPU budget): the runner calls
  it every second and asks for a full sync when it finds drift;
* the kernel's ruleset generation (nftables) says when nothing was listed needs listing:
  once a sync or a check has seen the kernel hold exactly what we believe at generation G,
  and our own commits are the only ones since, a full sync writes only what changed and a
  check looks at nothing. Any commit of anyone else's moves the generation and brings the
  listings back: the next check compares everything, peer-set elements included.

Failure is never partial. Any exception in a sync (absorbing the compiler's changes,
rendering, diffing, reading or writing the kernel) leaves the syncer knowing neither what
the kernel holds nor whether its incrementally kept desired state is whole (an absorb cut
short has taken changes from the compiler it never folded in). So the next sync rebuilds
desired from the compiler from scratch and diffs it against a fresh read of the kernel.
A periodic full resync (`rebuild=True`) rebuilds too and compares the rebuilt state with
the incrementally kept one first: any difference is a bug of the incremental path,
counted in `divergences` (and logged), and the rebuilt state wins.

The compiler is held to the same: an event that failed inside it (a bug) leaves it `dirty`,
and the next sync (the runner makes one due) rebuilds its plans and sets from its store
before anything else (`compiler_rebuilds`); every COMPILER_AUDIT_EVERY-th periodic resync
compiles from the store from scratch and compares (`compiler_divergences`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..compile.engine import Compiler
from ..dataplane.backend import AnyBackend
from ..dataplane.config import DispatchMode, RenderConfig
from ..dataplane.desired import DesiredState
from ..dataplane.drift import Drift, find_drift
from ..dataplane.objects import Ruleset, Touched, differences
from ..dataplane.ops import STALE_DELAY, Plan, plan, stale_chain
from ..model.objects import IPAddress, PodKey
from .interfaces import RouteInterfaces

log = logging.getLogger("policyd.sync")

# The share of time the drift check may spend listing peer sets' elements (up to 100k) once
# the kernel's generation has moved behind our back: a 40 ms listing every second, a 440 ms
# one every 9 s. Without a generation (iptables) every look is behind our back: less.
ELEMENT_SHARE = 0.05
ELEMENT_SHARE_WITHOUT_GENERATION = 0.01
COMPILER_AUDIT_EVERY = 12  # periodic resyncs (an hour at the agent's default of 5 min): a compile from scratch costs ~1 s at 10,000 pods


@dataclass(frozen=True)
class SyncResult:
    full: bool
    ops: int
    seconds: float
    pending_interfaces: int = 0
    drift: tuple[Drift, ...] = ()  # what a full resync found changed behind our back (and repaired)
    rebuilt: bool = False  # desired state was rebuilt from the compiler (first sync, after a failure, periodic)
    listed: bool = False  # the kernel's ruleset was listed (a full sync whose generation had moved)


class Syncer:
    def __init__(self, compiler: Compiler, backend: AnyBackend, cfg: RenderConfig, interfaces: RouteInterfaces | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.compiler = compiler
        self.backend = backend
        self.cfg = cfg
        self.last_plan: Plan | None = None
        self.desired = DesiredState(cfg, backend.renderer(cfg))
        self.interfaces = interfaces or RouteInterfaces()
        self.believed: Ruleset | None = None  # None: unknown, the next sync is full
        # Held while the compiler's changes are folded into desired state (absorb): whoever
        # feeds the compiler from another thread holds it too. The kernel work after that
        # (read, diff, apply) needs no lock: only sync() touches desired and believed.
        self.lock = threading.Lock()
        self.touched = Touched()
        self.pending: set[PodKey] = set()  # local pods whose interface is not known yet
        self._routes_fresh = False
        # Whatever the compiler already holds is new to us: the first sync builds it all.
        self.rebuild_next = True
        self.divergences = 0  # rebuilt desired state != the incrementally kept one (a bug)
        self.compiler_rebuilds = 0  # the compiler's plans and sets rebuilt after an event failed in it
        self.compiler_divergences = 0  # a periodic compile from scratch != the incremental compiler (a bug)
        self.periodic = 0  # periodic resyncs so far
        self.last_attempt_full = False  # whether the last sync attempted was (or became) a full one
        # The kernel's generation (Backend.generation) at which it held exactly `believed`
        # (but for `touched`, still to be written); None: not known.
        self.verified: int | None = None
        self.next_element_look = float("-inf")
        self.element_looks = 0  # drift checks that listed peer sets' elements
        # Chains flushed and waiting for their deletion (dataplane.ops.STALE_DELAY): since when.
        self.stale: dict[str, float] = {}
        self.clock = clock

    def deletion_due(self) -> float | None:
        """When the next sync should run to delete chains that have waited (None: none wait)."""
        return min(self.stale.values()) + STALE_DELAY if self.stale else None

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
        for spec in changes.sets:
            self.touched.update(self.desired.update_set(spec, self.compiler, changes.deltas.get(spec)))
        for key in changes.pods | set(self.pending):
            self.touched.update(self.desired.update_pod(key, self.compiler, self._interface))

    def rebuild(self, compare: bool) -> bool:
        """Desired state from the compiler alone, from scratch (under the lock). With
        `compare`, the incrementally kept state, brought up to date first, should be equal:
        a difference is counted. True when it was compared and equal (changes absorbed and
        not yet written stay in `touched`, still to be written)."""
        if compare:
            self.absorb()  # changes not yet folded in are not a divergence
        self.compiler.take_changes()  # everything is read below
        fresh = DesiredState(self.cfg, self.backend.renderer(self.cfg))
        self._routes_fresh = False
        self.pending = set()
        for spec in self.compiler.sets:
            fresh.update_set(spec, self.compiler)
        for key in self.compiler.plans:
            fresh.update_pod(key, self.compiler, self._interface)
        same = compare and fresh.ruleset.same_as(self.desired.ruleset)
        if compare and not same:
            self.divergences += 1
            log.error("the incrementally kept desired state differs from a rebuild from the compiler (a bug; the rebuilt "
                      "state is enforced): %s", ", ".join(differences(self.desired.ruleset, fresh.ruleset)[:10]))
        self.desired = fresh
        if not same:
            self.touched = Touched()
        self.rebuild_next = False
        return same

    def _heal_compiler(self, periodic: bool) -> None:
        """Under the lock: the compiler rebuilt from its store when an event failed in it (and
        desired state with it); on every COMPILER_AUDIT_EVERY-th periodic resync, compared
        with a compile from scratch."""
        if self.compiler.dirty:
            self.compiler.rebuild()
            self.compiler_rebuilds += 1
            self.rebuild_next = True
            log.warning("an event failed in the compiler earlier: its plans and sets were rebuilt from its store")
        elif periodic:
            self.periodic += 1
            if self.periodic % COMPILER_AUDIT_EVERY == 0 and not self.compiler.rebuild(compare=True):
                self.compiler_divergences += 1
                self.rebuild_next = True
                log.error("the incremental compiler differs from a compile from scratch (a bug; the compiled state is enforced)")

    def check(self) -> list[Drift]:
        """The frequent, cheap drift check: what differs from what we last wrote. Nothing
        when we do not know (the next sync is full anyway), and nothing to look at when the
        kernel's generation has not moved since it last held what we believe. Otherwise
        every rule, the maps and the node's own sets; and, within a CPU budget
        (ELEMENT_SHARE of the time), the peer sets' elements too, which lets a clean look
        establish the generation again."""
        if self.believed is None:
            return []
        gen = self.backend.generation()
        if gen is not None and gen == self.verified:
            return []
        start = time.monotonic()
        elements = start >= self.next_element_look
        found = self.backend.check(self.believed, elements, frozenset(self.touched.sets))
        if elements:
            self.element_looks += 1
            share = ELEMENT_SHARE if gen is not None else ELEMENT_SHARE_WITHOUT_GENERATION
            self.next_element_look = start + (time.monotonic() - start) / share
            if not found and gen is not None and self.backend.generation() == gen:
                self.verified = gen
        return found

    def unchanged(self) -> bool:
        """The kernel's generation is still the one last verified to hold what we believe:
        the frequent check would find nothing (one netlink request, no listing)."""
        if self.believed is None or self.verified is None:
            return False
        gen = self.backend.generation()
        return gen is not None and gen == self.verified

    def sync(self, full: bool = False, rebuild: bool = False) -> SyncResult:
        """`full`: read the kernel and compare everything; `rebuild`: and rebuild desired
        state from the compiler first (compared with the kept one). Any exception makes the
        next sync both (see the module's docstring)."""
        try:
            return self._sync(full, rebuild)
        except BaseException:
            self.believed = None  # we no longer know what the kernel holds
            self.verified = None
            self.rebuild_next = True  # nor whether desired state is whole
            raise

    def _sync(self, full: bool, rebuild: bool) -> SyncResult:
        start = time.perf_counter()
        self.last_attempt_full = full or rebuild or self.rebuild_next or self.believed is None or self.compiler.dirty
        with self.lock:
            self._heal_compiler(rebuild)
            rebuilt = self.rebuild_next or rebuild
            same = self.rebuild(compare=not self.rebuild_next) if rebuilt else True
            if not rebuilt:
                self.absorb()
        gen = self.backend.generation()
        # The kernel still holds what we believe (with `touched` still to be written):
        # nothing committed anywhere since we last knew, so a full sync need not list it.
        trusted = gen is not None and gen == self.verified and self.believed is not None and same
        full = full or rebuilt or self.believed is None
        drift: list[Drift] = []
        listed = full and not trusted
        now = self.clock()
        if listed:
            # Everything, elements too, compared rule by rule: repairs any drift. What we
            # believed is compared first, to say what changed behind our back.
            actual = self.backend.read()
            if self.believed is not None:
                drift = find_drift(self.believed, actual, True, self.backend.describe(), pending=set(self.touched.sets))
            p = plan(actual, self.desired.ruleset, deltas={}, stale=self.stale, now=now)
        else:
            due = self.deletion_due()
            if not self.touched and (due is None or now < due):
                return SyncResult(full, 0, time.perf_counter() - start, len(self.pending), rebuilt=rebuilt)
            p = plan(self.believed, self.desired.ruleset, self.touched, stale=self.stale, now=now)
        tx = self.backend.spell(p)
        self.backend.apply(tx)
        self.last_plan = p  # what this commit changed (reconcile/revoke.py reads whose connections to judge)
        self.stale = p.stale
        self.believed = self.desired.ruleset.copy()
        for name in self.stale:  # flushed, still there until their deletion
            self.believed.chains[name] = stale_chain(name)
        self.touched = Touched()
        # Known again only if the generation moved by our commits alone (a commit of anyone
        # else's in between, or one of ours that changed nothing, leaves it unknown: the
        # next check looks at everything and establishes it).
        after = self.backend.generation() if gen is not None and (listed or trusted) else None
        self.verified = after if after is not None and gen is not None and after == gen + self.backend.commits(tx) else None
        result = SyncResult(full, tx.ops, time.perf_counter() - start, len(self.pending), tuple(drift), rebuilt, listed)
        for d in drift:
            log.warning("drift repaired: %s (changed in the kernel behind policyd's back)", d)
        if tx.ops:
            log.debug("sync %s: %d operations in %.1f ms", "full" if full else "partial", tx.ops, result.seconds * 1e3)
        return result
