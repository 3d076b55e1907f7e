"""When to sync: one coalescing runner between the event handlers and the Syncer.

Handlers only change the compiler's state and call `request()`; `run_once()` (called by
the agent's loop) decides whether a sync is due:

* requested, and at least `min_interval` since the last sync (events arriving in between
  are batched into one transaction);
* a local pod still waits for its interface (retried at the same pace);
* after a failure (any exception): retry with exponential backoff; the Syncer makes that
  sync a full one, with desired state rebuilt from the compiler;
* every `resync_every` seconds: a full resync that repairs drift, with desired state
  rebuilt and compared with the incrementally kept one (`Syncer.divergences`);
* every `check_every` seconds: a cheap look at the kernel (Syncer.check); if what policyd
  wrote has changed (a table deleted, a chain flushed, a rule inserted…), a full sync at
  once, so drift is repaired within about a second instead of at the next resync;
* once chains flushed by an earlier sync have waited their second (Syncer.deletion_due):
  a sync that deletes them;
* at once when an event failed inside the compiler: the sync rebuilds it from its store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..dataplane.drift import Drift
from .syncer import Syncer, SyncResult

log = logging.getLogger("policyd.runner")


@dataclass
class RunnerStats:
    syncs: int = 0
    full_syncs: int = 0
    failures: int = 0
    full_failures: int = 0  # of those, syncs that were (or had become) full ones
    consecutive_failures: int = 0
    last_result: SyncResult | None = None
    last_error: str = ""
    last_sync_wall: float = 0.0  # time.time() of the last successful sync
    drift_seen: list[str] = field(default_factory=list)  # what the last check found (empty: in step)
    checks: int = 0
    durations: list[float] = field(default_factory=list)  # recent sync durations (s)


class SyncRunner:
    def __init__(
        self,
        syncer: Syncer,
        min_interval: float = 0.0,
        resync_every: float = 60.0,
        backoff: tuple[float, float] = (0.1, 10.0),
        clock: Callable[[], float] = time.monotonic,
        check_every: float = 1.0,
    ) -> None:
        self.syncer = syncer
        self.min_interval = min_interval
        self.resync_every = resync_every
        self.backoff = backoff
        self.clock = clock
        self.requested = True  # the first sync happens as soon as the runner is asked
        self.last_at = float("-inf")
        self.retry_at = float("-inf")
        self.next_full = clock() + resync_every
        self.check_every = check_every
        self.next_check = clock() + check_every
        self.stats = RunnerStats()

    def request(self) -> None:
        self.requested = True

    def due(self, now: float) -> bool:
        if self.stats.consecutive_failures:
            return now >= self.retry_at
        if now >= self.next_full or (self.check_every > 0 and now >= self.next_check) or self.syncer.compiler.dirty:
            return True
        deletion = self.syncer.deletion_due()
        if deletion is not None and now >= deletion:
            return True
        waiting = self.requested or bool(self.syncer.pending)
        return waiting and now - self.last_at >= self.min_interval

    def next_due(self, now: float, poll: float = 0.1) -> float:
        """When `due` turns true if nothing new is asked for: the retry after a failure, else
        the earliest of the next check and the next full resync; now (or after the minimum
        interval) when a sync is requested; `poll` from now while interfaces are pending
        (nothing announces them). The sync loop sleeps until then unless an event wakes it."""
        if self.stats.consecutive_failures:
            return self.retry_at
        at = self.next_full if self.check_every <= 0 else min(self.next_full, self.next_check)
        deletion = self.syncer.deletion_due()
        if deletion is not None:
            at = min(at, deletion)
        if self.syncer.compiler.dirty:
            at = now
        if self.requested:
            at = min(at, self.last_at + self.min_interval)
        if self.syncer.pending:
            at = min(at, max(now + poll, self.last_at + self.min_interval))
        return at

    def run_once(self) -> SyncResult | None:
        """Sync if one is due; never raises (failures are counted, logged and retried)."""
        now = self.clock()
        if not self.due(now):
            return None
        periodic = full = now >= self.next_full
        seen: list[Drift] = []
        if not full and not self.stats.consecutive_failures and self.check_every > 0 and now >= self.next_check:
            self.next_check = now + self.check_every
            seen = self._drifted()
            full = bool(seen) or self.stats.drift_seen != []
            deletion = self.syncer.deletion_due()
            deleting = deletion is not None and now >= deletion
            if not full and not deleting and not self.syncer.compiler.dirty and (
                    not (self.requested or self.syncer.pending) or now - self.last_at < self.min_interval):
                return None
        self.requested = False
        self.last_at = now
        try:
            result = self.syncer.sync(full=full, rebuild=periodic)
        except Exception as e:  # noqa: BLE001 - the agent must survive any kernel refusal
            self.requested = True
            s = self.stats
            s.failures += 1
            s.full_failures += int(self.syncer.last_attempt_full)
            s.consecutive_failures += 1
            s.last_error = f"{type(e).__name__}: {e}"
            delay = min(self.backoff[1], self.backoff[0] * 2 ** (s.consecutive_failures - 1))
            self.retry_at = now + delay
            log.error("sync failed (%d in a row), retrying in %.1f s with a full sync: %s", s.consecutive_failures, delay, s.last_error)
            return None
        s = self.stats
        s.syncs += 1
        s.full_syncs += int(result.full)
        s.consecutive_failures = 0
        s.last_result = result
        s.last_sync_wall = time.time()
        s.durations = (s.durations + [result.seconds])[-100:]
        if result.full:
            self.next_full = now + self.resync_every
            self.stats.drift_seen = []
            if seen:  # what the check saw is what this sync repaired, whether or not its listing names it
                result = replace(result, drift=tuple(dict.fromkeys((*result.drift, *seen))))
                s.last_result = result
        return result

    def idle_check(self, now: float) -> bool:
        """The common idle tick, on the caller's thread: when only the frequent check is due
        and the kernel has not moved since it was verified, the check is done (nothing to
        read, nothing to sync) and True is returned; otherwise False, and run_once decides."""
        s = self.stats
        deletion = self.syncer.deletion_due()
        if (s.consecutive_failures or s.drift_seen or self.requested or self.syncer.pending or self.syncer.compiler.dirty
                or now >= self.next_full
                or self.check_every <= 0 or now < self.next_check or (deletion is not None and now >= deletion)):
            return False
        try:
            if not self.syncer.unchanged():
                return False
        except Exception:  # noqa: BLE001 - run_once's check looks properly and reports it
            return False
        s.checks += 1
        self.next_check = now + self.check_every
        return True

    def _drifted(self) -> list[Drift]:
        """Run the cheap check: what no longer holds what we wrote (a failed look counts as
        a reason to look properly)."""
        self.stats.checks += 1
        try:
            found = self.syncer.check()
        except Exception as e:  # noqa: BLE001
            self.stats.drift_seen = [f"check failed: {e}"]
            return []
        self.stats.drift_seen = [str(d) for d in found]
        if found:
            log.warning("drift: %s; full sync now", ", ".join(self.stats.drift_seen[:5]))
        return found
