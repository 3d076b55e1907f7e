"""From a DNS answer held in the queue to addresses a domainNames rule admits.

For each answer a local pod receives (the data path queues only the reply direction of a
query the pod sent, to a pod a domainNames rule selects): the pod by its address, the
domainNames peers of its policies whose names match the name it asked for, and the answer's
addresses (through its CNAME chain), each written into those peers' sets with its TTL
(clamped) before the answer is let through, so the pod's first connection is already
allowed. An answer that teaches nothing passes; one that cannot be read, or whose addresses
cannot be written, passes or is dropped as the fail mode says (never widening anything: an
address not learned stays denied). Every outcome is counted.

The kernel side (writing elements) is a `Writer`; which sets a pod's answers feed is a
`Scope` (both given by the agent), so this module is testable without a kernel.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..model import names as domain
from . import answers, packets
from .tcp import Streams

log = logging.getLogger("policyd.names")

HOLD_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25, 1.0)


@dataclass(frozen=True)
class Limits:
    min_ttl: int = 30  # seconds an address is kept at least (applications cache answers longer than their TTL)
    max_ttl: int = 86_400
    per_pod: int = 1_000  # entries a pod's answers may hold at once; past it, nothing more is learned (counted)
    tcp_wait: float = 1.0  # seconds a DNS message over TCP may take to arrive whole


@dataclass(frozen=True)
class Target:
    """Where a pod's answers for some names go: one domainNames peer's sets (one per family)."""

    names: tuple[str, ...]
    sets: dict[int, str]  # family → set name


class Scope(Protocol):
    def targets(self, address: str) -> tuple[str | None, tuple[Target, ...]]:
        """(the local pod holding `address`, the domainNames peers of its policies)."""


class Writer(Protocol):
    def add(self, entries: dict[str, list[tuple[str, float]]]) -> None:
        """Add (or refresh) addresses with their timeouts, set by set; raises OSError."""

    def delete(self, entries: dict[str, list[str]]) -> None:
        """Remove addresses (a deleted pod's); raises OSError."""


@dataclass
class Stats:
    responses: int = 0  # answers held and decided
    learned: int = 0  # answers whose addresses were written
    entries_written: int = 0
    passed: dict[str, int] = field(default_factory=dict)  # passed without learning, by reason
    dropped: dict[str, int] = field(default_factory=dict)  # dropped (fail closed), by reason
    held_seconds: list[int] = field(default_factory=lambda: [0] * (len(HOLD_BUCKETS) + 1))  # histogram
    held_sum: float = 0.0
    over_limit: int = 0  # addresses not learned because their pod held its limit

    def outcome(self, reason: str, accept: bool) -> None:
        d = self.passed if accept else self.dropped
        d[reason] = d.get(reason, 0) + 1

    def held(self, seconds: float) -> None:
        self.held_sum += seconds
        for i, b in enumerate(HOLD_BUCKETS):
            if seconds <= b:
                self.held_seconds[i] += 1
                return
        self.held_seconds[-1] += 1


class Learner:
    """One queued packet at a time (`handle`); returns the verdicts to give: (packet id, accept)."""

    def __init__(self, scope: Scope, writer: Writer, fail_open: bool, limits: Limits = Limits(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.scope, self.writer, self.fail_open, self.limits, self.clock = scope, writer, fail_open, limits, clock
        self.stats = Stats()
        self.streams = Streams()
        # What each pod's answers put in the kernel: (set, address) → expiry, per pod; an
        # entry leaves when its time is up, or with its pod (`forget_pod`).
        self.entries: dict[str, dict[tuple[str, str], float]] = {}

    def handle(self, pid: int, payload: bytes) -> list[tuple[int, bool]]:
        try:
            pkt = packets.parse(payload)
        except (packets.NotDns, ValueError) as e:
            return [(pid, self._fail("unreadable packet", e))]
        if pkt.proto == packets.UDP:
            return [(pid, self._message(pkt.dst, pkt.payload))]
        fed = self.streams.feed(pid, pkt, self.clock())
        verdicts = [(p, True) for p in fed.release]
        ok = all([self._message(pkt.dst, m) for m in fed.messages])
        if not ok:  # (a message that failed closed: what carried it is dropped too)
            verdicts = [(p, False) for p, _ in verdicts]
        return verdicts + [(p, self._fail("TCP stream not followed", None)) for p in fed.given_up]

    def expire(self) -> list[tuple[int, bool]]:
        """TCP segments that waited too long for the rest of their message, and entries past
        their time; call now and then."""
        now = self.clock()
        for pod, held in list(self.entries.items()):
            for k, until in list(held.items()):
                if until <= now:
                    del held[k]
            if not held:
                del self.entries[pod]
        return [(p, self._fail("TCP message not complete in time", None)) for p in self.streams.expire(now, self.limits.tcp_wait)]

    def _fail(self, reason: str, error: Exception | None) -> bool:
        if error is not None:
            log.debug("DNS answer not read (%s): %s", reason, error)
        self.stats.responses += 1
        self.stats.outcome(reason, self.fail_open)
        return self.fail_open

    def _message(self, dst: str, wire: bytes) -> bool:
        """One whole DNS message to the pod at `dst`: learn from it; whether it may pass."""
        pod, targets = self.scope.targets(dst)
        if pod is None:
            return self._pass("not a local pod's address")
        try:
            ans = answers.parse(wire)
        except answers.Unreadable as e:
            return self._fail("unreadable answer", e)
        wanted = [t for t in targets if domain.any_matches(t.names, ans.qname)]
        if not wanted:
            return self._pass("no domainNames rule of the pod lists the name")
        if not ans.addresses:
            return self._pass("no address in the answer")
        now = self.clock()
        held = self.entries.setdefault(pod, {})
        writes: dict[str, list[tuple[str, float]]] = {}
        fresh: set[tuple[str, str]] = set()  # entries this answer adds to what the pod holds
        for t in wanted:
            for address, ttl in ans.addresses:
                name = t.sets.get(6 if ":" in address else 4)
                if name is None:
                    continue
                seconds = float(max(self.limits.min_ttl, min(self.limits.max_ttl, ttl)))
                if (name, address) not in held and (name, address) not in fresh:
                    if len(held) + len(fresh) >= self.limits.per_pod:
                        self.stats.over_limit += 1
                        continue
                    fresh.add((name, address))
                writes.setdefault(name, []).append((address, seconds))
        if not writes:
            return self._pass("the pod holds its limit of learned addresses")
        try:
            self.writer.add(writes)
        except OSError as e:
            log.warning("learning %s for %s failed: %s", ans.qname, pod, e)
            return self._fail("addresses not written", None)
        for name, items in writes.items():
            for address, seconds in items:
                held[(name, address)] = now + seconds
        self.stats.responses += 1
        self.stats.learned += 1
        self.stats.entries_written += sum(map(len, writes.values()))
        return True

    def _pass(self, reason: str) -> bool:
        self.stats.responses += 1
        self.stats.outcome(reason, True)
        return True

    def forget_pod(self, pod: str) -> None:
        """A pod went: what only its answers put in the kernel goes too."""
        held = self.entries.pop(pod, {})
        others = {k for p in self.entries.values() for k in p}
        gone: dict[str, list[str]] = {}
        for name, address in held:
            if (name, address) not in others:
                gone.setdefault(name, []).append(address)
        if gone:
            try:
                self.writer.delete(gone)
            except OSError as e:
                log.warning("removing what %s's answers taught failed (it expires with its TTL): %s", pod, e)

    @property
    def held_entries(self) -> int:
        return sum(map(len, self.entries.values()))


class QueueReader:
    """The learner's thread: packets off the queue, verdicts back, in the namespace of the
    thread that calls `start`."""

    def __init__(self, learner: Learner, open_queue: Callable[[], object]) -> None:
        self.learner, self.open_queue = learner, open_queue
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()  # around the learner (the agent's pod deletions come from another thread)
        self.queue: object = None
        self.failures = 0
        self.last_error = ""

    REOPEN_EVERY = 5.0  # seconds between attempts to bind a queue that could not be bound

    def start(self) -> None:
        """Bind the queue now (in the caller's network namespace; the thread inherits it).
        When it cannot be bound (another program holds the number, no nfnetlink_queue), the
        error is logged and kept in `status()`, and the thread tries again every few seconds:
        meanwhile answers pass unlearned or are dropped, as the fail mode says."""
        self._open()
        self.thread = threading.Thread(target=self._run, name="dns-learner", daemon=True)
        self.thread.start()

    def _open(self) -> bool:
        try:
            self.queue = self.open_queue()
            return True
        except OSError as e:
            self.failures += 1
            self.last_error = f"the queue cannot be bound: {e}"
            log.error("domainNames: %s; answers pass unlearned or are dropped (fail mode) until it can; retrying every %.0f s",
                      self.last_error, self.REOPEN_EVERY)
            return False

    def _run(self) -> None:
        while self.queue is None:
            if self.stopping.wait(self.REOPEN_EVERY):
                return
            if self._open():
                log.info("domainNames: the queue is bound now")
        q = self.queue
        next_expiry = time.monotonic() + 0.25
        while not self.stopping.is_set():
            try:
                # A quarter second while TCP segments wait for the rest of a message; idle, a
                # second (an idle agent wakes once a second; stop() takes at most that).
                got = q.recv(timeout=0.25 if self.learner.streams.waiting else 1.0)  # type: ignore[attr-defined]
                for item in got:
                    start = time.perf_counter()
                    with self.lock:
                        verdicts = self.learner.handle(item.id, item.payload)
                    for pid, accept in verdicts:
                        q.verdict(pid, accept)  # type: ignore[attr-defined]
                    self.learner.stats.held(time.perf_counter() - start)
                if time.monotonic() >= next_expiry:
                    next_expiry = time.monotonic() + 0.25
                    with self.lock:
                        late = self.learner.expire()
                    for pid, accept in late:
                        q.verdict(pid, accept)  # type: ignore[attr-defined]
            except Exception as e:  # noqa: BLE001 - counted; the queue goes on (held packets pass per the rule's bypass)
                self.failures += 1
                self.last_error = f"{type(e).__name__}: {e}"
                log.exception("the DNS learner failed on a packet")
                time.sleep(0.01)

    def forget_pod(self, pod: str) -> None:
        with self.lock:
            self.learner.forget_pod(pod)

    def status(self) -> dict[str, object]:
        """What the learner did, for the agent's status (JSON)."""
        s = self.learner.stats
        return {"queue_running": self.queue is not None and self.thread is not None and self.thread.is_alive(), "responses": s.responses, "learned": s.learned,
                "entries_written": s.entries_written, "held_entries": self.learner.held_entries, "passed": dict(s.passed),
                "dropped": dict(s.dropped), "over_limit": s.over_limit, "failures": self.failures, "last_error": self.last_error}

    def stop(self) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=2)
        close = getattr(self.queue, "close", None)
        if close is not None:
            close()
