"""The drop log: NFLOG packets become one line each, naming what dropped them.

A reader thread takes packets off the NFLOG socket into a bounded queue (a flood costs
counted, dropped records, never memory or the agent's event loop); a writer thread turns
each into a record: the pod whose chain dropped it, the direction, the peer (a pod's
namespace/name when the agent knows the address, else the address), protocol and port, and
the cause named by the rule's prefix (`pd-` and the log rule's id), never inferred from the
packet. A prefix the agent has not seen (the rules changed) refreshes the cause book from
the rendered rules once (only the pods whose rules changed are read again); what still has no cause is
logged as unattributed, not guessed. Peers are looked up in the store's address index when
the record is written, so a pod created since the last refresh is named and a deleted
pod's reused address is never named after it.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from ..compile.engine import Compiler
from ..dataplane.droplog import AUDIT, DropCause
from ..dataplane.objects import ChainDef
from ..dataplane.render import PodObjects
from ..dataplane.rules import Rule
from ..model.objects import Direction
from .nflog import NflogSocket, Packet

log = logging.getLogger("policyd.droplog")


class CauseBook:
    """prefix → cause, from the rules the agent rendered (a log rule's prefix is `pd-` and its
    id). Causes are kept after their rules change (up to `limit`, oldest first out): a packet
    logged just before a change is still named by the rule that dropped it."""

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self.causes: OrderedDict[str, DropCause] = OrderedDict()
        self._read: dict[str, PodObjects] = {}  # the pods whose causes are in the book

    def refresh(self, pods: Mapping[str, PodObjects]) -> None:
        """Read the causes of the pods whose rules are new or changed since the last refresh
        (rendered objects are immutable: a changed pod's are other objects)."""
        for key, objs in pods.items():
            if self._read.get(key) is not objs:
                for prefix, cause in log_causes(objs.chains):
                    self.causes[prefix] = cause
                    self.causes.move_to_end(prefix)
        self._read = dict(pods)
        while len(self.causes) > self.limit:
            self.causes.popitem(last=False)


def log_causes(chains: Iterable[ChainDef]) -> Iterator[tuple[str, DropCause]]:
    """(NFLOG prefix, cause) of every log rule of these chains."""
    for c in chains:
        for r in c.rules:
            if isinstance(r, Rule) and r.log is not None and r.origin is not None and r.origin.cause is not None:
                yield r.log_prefix, r.origin.cause


class CompiledSource:
    """What the drop log reads from an agent, under the agent's lock: the causes of the rules
    it rendered (`pods`: its desired state's pod objects), and which pod holds an address
    (the compiler's store's address index, turned on here)."""

    def __init__(self, compiler: Compiler, lock: AbstractContextManager[Any] | None = None,
                 pods: Callable[[], Mapping[str, PodObjects]] | None = None) -> None:
        self.compiler = compiler
        self.lock: AbstractContextManager[Any] = lock if lock is not None else threading.Lock()
        self.pods = pods or (lambda: {})
        with self.lock:
            compiler.store.index_addresses()

    def fill(self, book: CauseBook) -> None:
        with self.lock:
            pods = dict(self.pods())
        book.refresh(pods)

    def pod_at(self, address: str) -> str | None:
        with self.lock:
            return self.compiler.store.pod_at(address)


@dataclass
class DropCounters:
    """Each field has one writer (queue_full and socket_overruns: the reader thread; the
    rest: the writer thread); /metrics only reads them, so no lock is needed."""

    logged: int = 0  # records written
    unattributed: int = 0  # of those, with a prefix no plan of this agent produced
    queue_full: int = 0  # packets dropped because the writer fell behind
    socket_overruns: int = 0  # times the kernel dropped messages (socket buffer full)
    by_direction: dict[str, int] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)  # thread → times it failed and was started again
    last_error: str = ""


def record(packet: Packet, cause: DropCause | None, pod_at: Callable[[str], str | None], node: str, when: float) -> dict[str, Any]:
    """One drop as a structured record (the JSON log line's fields); `pod_at` names the pod
    that holds an address, if one does."""
    if cause is not None and cause.accepted:
        msg = "packet accepted (sampled)"
    elif cause is not None and cause.tier == AUDIT:
        msg = "packet would be dropped (audit mode)"
    else:
        msg = "packet dropped"
    out: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{int(when % 1 * 1000):03d}Z",
        "msg": msg, "node": node,
        "src": pod_at(packet.src) or packet.src, "srcIP": packet.src,
        "dst": pod_at(packet.dst) or packet.dst, "dstIP": packet.dst,
        "protocol": packet.protocol,
    }
    if packet.dport is not None:
        out["port"] = packet.dport
    if cause is None:
        out.update(cause="unattributed: no rule of this agent's plans has this log prefix", prefix=packet.prefix)
        return out
    out.update(pod=cause.pod, direction=cause.direction.value, tier=cause.tier, policies=list(cause.policies),
               cause=cause.text(), accepted=cause.accepted)
    if cause.rule:
        out["rule"] = cause.rule
    return out


def text_line(rec: dict[str, Any]) -> str:
    """The text log format: `drop ingress default/backend ← default/walker TCP/80: <cause>`
    (`audit …` for what an audit-mode policy would drop)."""
    where = f"{rec['protocol']}/{rec['port']}" if "port" in rec else rec["protocol"]
    if "pod" not in rec:
        return f"drop {rec['src']} → {rec['dst']} {where}: {rec['cause']} ({rec['prefix']})"
    word = "accept" if rec["msg"].startswith("packet accepted") else "audit" if rec["tier"] == AUDIT else "drop"
    if rec["direction"] == Direction.INGRESS.value:
        return f"{word} ingress {rec['pod']} ← {rec['src']} {where}: {rec['cause']}"
    return f"{word} egress {rec['pod']} → {rec['dst']} {where}: {rec['cause']}"


def json_line(rec: dict[str, Any]) -> str:
    return json.dumps(rec, separators=(",", ":"))


class DropLogger:
    """Reads NFLOG `group` in the network namespace of the thread that calls `start` and
    writes one line per packet through `emit`, with causes and pods from `source`."""

    def __init__(self, group: int, node: str, source: CompiledSource, emit: Callable[[str], None],
                 fmt: str = "text", queue_size: int = 10_000) -> None:
        self.group, self.node, self.source, self.emit = group, node, source, emit
        self.format = json_line if fmt == "json" else text_line
        self.book = CauseBook()
        self.counters = DropCounters()
        self.queue: queue.Queue[tuple[float, Packet]] = queue.Queue(queue_size)
        self.stopping = threading.Event()
        self.sock: NflogSocket | None = None
        self.threads: list[threading.Thread] = []
        self._refreshed = 0.0

    def start(self) -> None:
        """Bind the group now (so an error is the caller's) and start both threads."""
        self.sock = self.open_socket()
        self.source.fill(self.book)
        self._refreshed = time.monotonic()
        self.threads = [threading.Thread(target=self._supervised, args=("read", self._read), name="nflog-read", daemon=True),
                        threading.Thread(target=self._supervised, args=("write", self._write), name="nflog-write", daemon=True)]
        for t in self.threads:
            t.start()

    def open_socket(self) -> NflogSocket:
        return NflogSocket(self.group)

    def _supervised(self, name: str, loop: Callable[[], None], backoff: tuple[float, float] = (0.1, 10.0)) -> None:
        """Run `loop` until stopped; an exception is logged and counted, and the loop starts
        again after a pause that doubles with each failure in a row (reset by a minute of
        work): a drop log that died silently would leave /readyz green and the log empty.
        The reader binds a new socket first (the old one may be what failed)."""
        failures = 0
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                loop()
                return
            except Exception as e:  # noqa: BLE001 - any failure: logged, counted, restarted
                failures = 1 if time.monotonic() - started > 60 else failures + 1
                self.counters.restarts[name] = self.counters.restarts.get(name, 0) + 1
                self.counters.last_error = f"{name}: {type(e).__name__}: {e}"
                delay = min(backoff[1], backoff[0] * 2 ** (failures - 1))
                log.exception("drop log %s thread failed (%d in a row); starting it again in %.1f s", name, failures, delay)
            if self.stopping.wait(delay):
                return
            if name == "read":
                try:
                    if self.sock is not None:
                        self.sock.close()
                    self.sock = self.open_socket()
                except Exception as e:  # noqa: BLE001 - counted as a failure of the next round
                    self.counters.last_error = f"read: cannot bind NFLOG group {self.group} again: {e}"
                    log.error("%s", self.counters.last_error)

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=2)
        if self.sock is not None:
            self.sock.close()

    def _read(self) -> None:
        assert self.sock is not None
        while not self.stopping.is_set():
            for packet in self.sock.recv(timeout=0.2):
                try:
                    self.queue.put_nowait((time.time(), packet))
                except queue.Full:
                    self.counters.queue_full += 1
            self.counters.socket_overruns = self.sock.overruns

    def _write(self) -> None:
        while not self.stopping.is_set() or not self.queue.empty():
            try:
                when, packet = self.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            self.handle(when, packet)

    def handle(self, when: float, packet: Packet) -> dict[str, Any]:
        cause = self.book.causes.get(packet.prefix)
        if cause is None and time.monotonic() - self._refreshed > 0.5:  # at most twice a second
            self.source.fill(self.book)
            self._refreshed = time.monotonic()
            cause = self.book.causes.get(packet.prefix)
        rec = record(packet, cause, self.source.pod_at, self.node, when)
        self.counters.logged += 1
        if cause is None:
            self.counters.unattributed += 1
        elif not cause.accepted:
            d = cause.direction.value
            self.counters.by_direction[d] = self.counters.by_direction.get(d, 0) + 1
        self.emit(self.format(rec))
        return rec
