"""Flow records: the new connections of a node's pods, aggregated per (source, destination,
protocol, destination port), in bounded memory; the input of `policyd advise`.

`FlowTable` is pure (fed `Connection`s, it resolves addresses through a callable);
`FlowRecorder` is the effectful edge: a thread reading conntrack's NEW events
(observe/conntrack.py) in the node's network namespace. A record names a pod by
`namespace/name` when the agent knows the address, else the address itself; a connection
with no local pod on either side (the node's own traffic) is not recorded.

JSON (`kind: FlowRecords`, version 1, docs/json.md): `nodes` (whose records these are),
`records` (each `src`, `dst`,
`protocol`, `port`, `first`, `last` (Unix seconds), `count`), `dropped` (connections not
recorded because the table was full).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .conntrack import Connection, ConntrackEvents

log = logging.getLogger("policyd.flows")
FLOW_RECORDS = "FlowRecords"
PORTED = ("TCP", "UDP", "SCTP")
RECORDED = (*PORTED, "ICMP", "ICMPv6")  # the protocols the agents name (others by number)


def _endpoint(text: str) -> bool:
    """A pod's namespace/name, or an IP address."""
    ns, slash, name = text.partition("/")
    if slash:
        return bool(ns) and bool(name) and "/" not in name and len(text) <= 317
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
DEFAULT_LIMIT = 10_000


@dataclass
class FlowRecord:
    src: str  # namespace/name of a pod, or an address
    dst: str
    protocol: str
    port: int | None
    first: float
    last: float
    count: int

    @property
    def key(self) -> tuple[str, str, str, int | None]:
        return (self.src, self.dst, self.protocol, self.port)

    def to_json(self) -> dict[str, Any]:
        return {"src": self.src, "dst": self.dst, "protocol": self.protocol, "port": self.port,
                "first": round(self.first, 3), "last": round(self.last, 3), "count": self.count}

    @staticmethod
    def from_json(doc: Any, where: str = "record") -> FlowRecord:
        """One record as an agent writes it, checked field by field (ValueError naming the
        field): src and dst a pod (namespace/name) or an address, a protocol the agents
        record (TCP, UDP, SCTP, ICMP, ICMPv6, or an IP protocol number), a port 1-65535 for
        TCP, UDP and SCTP only, times that are numbers, a count of at least 1."""
        if not isinstance(doc, dict):
            raise ValueError(f"{where}: not an object")
        ends = []
        for field in ("src", "dst"):
            v = doc.get(field)
            if not isinstance(v, str) or not _endpoint(v):
                raise ValueError(f"{where}.{field}: {v!r} is neither a pod (namespace/name) nor an IP address")
            ends.append(v)
        proto = doc.get("protocol")
        if not isinstance(proto, str) or not (proto in RECORDED or (proto.isdigit() and int(proto) <= 255)):
            raise ValueError(f"{where}.protocol: {proto!r} is not TCP, UDP, SCTP, ICMP, ICMPv6 or an IP protocol number")
        port = doc.get("port")
        if proto in PORTED:
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise ValueError(f"{where}.port: {port!r} is not a port number between 1 and 65535")
        elif port is not None:
            raise ValueError(f"{where}.port: {proto} has no ports, not {port!r}")
        times = []
        for field in ("first", "last"):
            t = doc.get(field, 0)
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t < 1e12:
                raise ValueError(f"{where}.{field}: {t!r} is not a time in seconds since the epoch")
            times.append(float(t))
        count = doc.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"{where}.count: {count!r} is not a count of at least 1")
        return FlowRecord(ends[0], ends[1], proto, port, times[0], times[1], count)


class FlowTable:
    """At most `limit` records; beyond that, new keys are counted in `dropped`, never stored
    (a scan of many ports cannot grow the agent)."""

    def __init__(self, pod_at: Callable[[str], str | None], is_local: Callable[[str], bool], limit: int = DEFAULT_LIMIT) -> None:
        self.pod_at, self.is_local, self.limit = pod_at, is_local, limit
        self.records: dict[tuple[str, str, str, int | None], FlowRecord] = {}
        self.dropped = 0
        self.lock = threading.Lock()

    def add(self, conns: Iterable[Connection], now: float | None = None) -> None:
        now = time.time() if now is None else now
        for c in conns:
            src, dst = self.pod_at(c.src), self.pod_at(c.dst)
            if not ((src and self.is_local(src)) or (dst and self.is_local(dst))):
                continue
            key = (src or c.src, dst or c.dst, c.protocol, c.dport)
            with self.lock:
                rec = self.records.get(key)
                if rec is not None:
                    rec.count += 1
                    rec.last = now
                elif len(self.records) < self.limit:
                    self.records[key] = FlowRecord(*key, now, now, 1)
                else:
                    self.dropped += 1

    def to_json(self, node: str) -> dict[str, Any]:
        with self.lock:
            records = sorted(self.records.values(), key=lambda r: (r.src, r.dst, r.protocol, r.port or 0))
            return document([node], records, self.dropped)


def document(nodes: list[str], records: Iterable[FlowRecord], dropped: int = 0) -> dict[str, Any]:
    return {"kind": FLOW_RECORDS, "version": 1, "nodes": nodes, "records": [r.to_json() for r in records], "dropped": dropped}


def merge(docs: Iterable[dict[str, Any]]) -> list[FlowRecord]:
    """The records of several nodes as one list. Both nodes of a connection between them
    record it, so a key's count is the larger of theirs, not the sum."""
    out: dict[tuple[str, str, str, int | None], FlowRecord] = {}
    for doc in docs:
        if not isinstance(doc, dict):
            raise ValueError(f"not FlowRecords: the document is {type(doc).__name__ if doc is not None else 'null'}, not an object")
        if doc.get("kind") != FLOW_RECORDS or doc.get("version") != 1:
            raise ValueError(f"not FlowRecords version 1: kind {doc.get('kind')!r}, version {doc.get('version')!r}")
        records = doc.get("records", [])
        if not isinstance(records, list):
            raise ValueError("records: not a list")
        for i, raw in enumerate(records):
            r = FlowRecord.from_json(raw, f"records[{i}]")
            have = out.get(r.key)
            if have is None:
                out[r.key] = r
            else:
                have.first, have.last, have.count = min(have.first, r.first), max(have.last, r.last), max(have.count, r.count)
    return sorted(out.values(), key=lambda r: (r.src, r.dst, r.protocol, r.port or 0))


class FlowRecorder:
    """Feeds a FlowTable from conntrack NEW events, in the network namespace of the thread
    that calls `start` (the socket is opened there, before the thread starts)."""

    def __init__(self, table: FlowTable) -> None:
        self.table = table
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.events: ConntrackEvents | None = None

    def start(self) -> None:
        self.events = ConntrackEvents()
        self._thread = threading.Thread(target=self._run, name="flows", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self.events is not None
        while not self._stop.is_set():
            try:
                self.table.add(self.events.recv(0.2))
            except Exception:  # noqa: BLE001 (a bad datagram must not end the recording)
                log.exception("flow records: reading conntrack events failed")
                time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self.events is not None:
            self.events.close()
