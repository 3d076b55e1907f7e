"""Revoked access ends open connections too.

policyd's base chains accept established traffic before any policy, so a connection a
change no longer admits would keep flowing for as long as conntrack keeps it. After a sync
that changed the kernel, the agent reads the node's conntrack table and marks the entries
of connections the policies now refuse on this node's side (the egress of a local source
pod, the ingress of a local destination pod), judged by the engine (compile/evaluate.py, the
same reading of the plans the kernel rules are rendered from). The base chains' first rule
drops every packet of a marked connection, both ways (RenderConfig.revoke_mark).

Why a mark and not a deletion: a deleted TCP entry is picked up again by conntrack from the
next packet in the middle of the stream, and when that packet is the server's
retransmission it looks like a connection the server opened, which an ingress-only policy
allows: the stream lives on. A marked entry keeps every packet of the connection dropped
for as long as it lives; an entry a later change admits again is deleted, so its next
packet is judged afresh.

Never touched: connections the node itself opened (node → pod traffic is never filtered),
and connections a `domainNames` rule may admit (whether an address was learned is the
kernel's knowledge, not the engine's: such a rule is taken to match, so it can only spare a
connection). The judgement (`judge`) is pure; `ConnectionCutter` applies it to the kernel.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from ..compile.engine import Compiler
from ..compile.evaluate import Endpoint, Evaluator, SideVerdict
from ..dataplane.config import DEFAULT_REVOKE_MARK
from ..dataplane.objects import AddrPort, IfaceAddr, Prefix
from ..dataplane.ops import CreateChain, DeleteChain, DeleteSet, EditChain, FillChain, FlushChain, HookChain, Op, SetElements
from ..model.objects import Direction, Pod, PodKey
from ..observe.conntrack import ConntrackTable, Tracked
from .syncer import Syncer

log = logging.getLogger("policyd.revoke")


@dataclass(frozen=True)
class Cut:
    entry: Tracked
    side: SideVerdict  # the local side that refuses it now


@dataclass(frozen=True)
class Judgement:
    cut: list[Cut]  # refused now, not marked yet: mark
    readmitted: list[Tracked]  # marked, admitted again: delete, so the next packet is judged afresh


def judge(entries: Iterable[Tracked], evaluator: Evaluator, local: Mapping[str, Pod], node_addresses: set[str], mark: int) -> Judgement:
    """What to do with each conntrack entry under the policies now compiled."""
    cut: list[Cut] = []
    readmitted: list[Tracked] = []
    # Many entries share all but the source port (a client's repeated connections): one
    # evaluation each.
    seen: dict[tuple[str, str, str, int | None], SideVerdict | None] = {}
    for e in entries:
        c = e.connection
        if c.src in node_addresses or e.closed:
            continue  # opened by the node (never filtered), or a TCP connection that has ended
        src_pod, dst_pod = local.get(c.src), local.get(c.dst)
        if src_pod is None and dst_pod is None:
            continue
        key = (c.src, c.dst, c.protocol, c.dport)
        if key in seen:
            refused = seen[key]
        else:
            refused = seen[key] = refusal(evaluator, c.src, c.dst, c.protocol, c.dport, src_pod, dst_pod)
        marked = e.mark & mark == mark
        if refused is not None and not marked:
            cut.append(Cut(e, refused))
        elif refused is None and marked:
            readmitted.append(e)
    return Judgement(cut, readmitted)


def refusal(evaluator: Evaluator, src: str, dst: str, protocol: str, port: int | None, src_pod: Pod | None,
            dst_pod: Pod | None) -> SideVerdict | None:
    """The local side that refuses this connection, if one does."""
    src_ip, dst_ip = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    for direction, pod, ip, peer in ((Direction.EGRESS, src_pod, src_ip, dst_ip), (Direction.INGRESS, dst_pod, dst_ip, src_ip)):
        if pod is not None:
            side = evaluator.side(direction, Endpoint(ip, pod), peer, protocol, port)
            if not side.allowed:
                return side
    return None


def suspects(ops: Iterable[Op], chain_pods: Mapping[str, Iterable[str]]) -> set[str] | None:
    """The addresses whose connections a commit may have revoked (None: it cannot be told,
    judge them all). A revocation takes away a peer from a set (its address is removed) or
    changes a local pod's own chains (a rule went, or the pod is newly isolated): so the
    addresses removed from any set, and the addresses of the pods whose chains changed
    (`chain_pods`: chain name → that pod's addresses). Whatever else changed (a base chain, a
    set replaced whole, a prefix) makes it every connection."""
    out: set[str] = set()
    for op in ops:
        if isinstance(op, SetElements):
            if op.flush:
                return None
            for e in op.removed:
                if isinstance(e, str):
                    out.add(e)
                elif isinstance(e, (AddrPort, IfaceAddr)):
                    out.add(e.addr)
                elif isinstance(e, Prefix):
                    return None
        elif isinstance(op, DeleteSet):
            return None
        elif isinstance(op, (CreateChain, FillChain, EditChain, FlushChain, DeleteChain, HookChain)):
            if op.chain.hook is not None:
                return None
            out.update(chain_pods.get(op.chain.name, ()))
    return out


class CommitSuspects:
    """`suspects` of a syncer's last commit, each time it is called (None: none known, judge
    every connection). The chains' owners are remembered from the call before too: a pod no
    longer isolated (its chains gone) may have connections to release."""

    def __init__(self, syncer: Syncer) -> None:
        self.syncer = syncer
        self.owners: dict[str, list[str]] = {}

    def __call__(self) -> set[str] | None:
        s = self.syncer
        with s.lock:
            store = s.compiler.store
            owners = {c.name: [str(ip) for ip in pod.ips] for key, objs in s.desired.pods.items()
                      if (pod := store.pods.get(PodKey(key))) is not None for c in objs.chains}
        both, self.owners = {**self.owners, **owners}, owners
        return None if s.last_plan is None else suspects(s.last_plan.ops, both)


def node_addresses() -> set[str]:
    """The addresses of the calling thread's network namespace (the node's): IPv4 from the
    routing trie's local entries, IPv6 from if_inet6."""
    out: set[str] = set()
    try:
        with open("/proc/thread-self/net/fib_trie") as f:
            last = ""
            for line in f:
                text = line.strip()
                if text.startswith("|--"):
                    last = text[3:].strip()
                elif text.startswith("/32 host LOCAL") and last:
                    out.add(last)
    except OSError:
        pass
    try:
        with open("/proc/thread-self/net/if_inet6") as f:
            for line in f:
                out.add(str(ipaddress.IPv6Address(bytes.fromhex(line.split()[0]))))
    except OSError:
        pass
    return out


class ConnectionCutter:
    """One sweep at a time, made and run in the node's namespace. `cut` counts the
    connections ended, by the refusing side's direction and tier. The table is dumped
    outside the compiler's lock; only the judgement holds it."""

    def __init__(self, compiler: Compiler, lock: threading.Lock, mark: int = DEFAULT_REVOKE_MARK,
                 table: Callable[[], ConntrackTable] = ConntrackTable) -> None:
        self.compiler, self.lock, self.mark = compiler, lock, mark
        self.table = table()
        self.cut: dict[tuple[str, str], int] = {}
        self.readmitted = 0
        self.failures = 0

    def sweep(self, only: set[str] | None = None) -> Judgement:
        """Judge the connections of these addresses (None: every connection)."""
        try:
            entries = self.table.dump(None if only is None else {socket.inet_pton(socket.AF_INET6 if ":" in a else socket.AF_INET, a)
                                                                 for a in only})
            with self.lock:
                store = self.compiler.store
                local = {str(ip): pod for key in self.compiler.plans if (pod := store.pods.get(key)) is not None for ip in pod.ips}
                found = judge(entries, Evaluator(self.compiler, learned=lambda spec, ip: True), local, node_addresses(), self.mark)
            for c in found.cut:
                if self.table.set_mark(c.entry, self.mark):
                    key = (c.side.direction.value, c.side.tier)
                    self.cut[key] = self.cut.get(key, 0) + 1
                    conn = c.entry.connection
                    log.info("ended %s %s → %s port %s: %s's %s refuses it now (%s)", conn.protocol, conn.src, conn.dst, conn.dport,
                             c.side.endpoint, c.side.direction.value, c.side.tier)
            for e in found.readmitted:
                self.readmitted += self.table.delete(e)
            return found
        except OSError as e:  # conntrack unreadable: enforcement of new connections is unaffected
            self.failures += 1
            log.warning("revoked connections not ended: %s", e)
            return Judgement([], [])

    def close(self) -> None:
        self.table.close()
