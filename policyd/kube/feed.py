"""What the watch streams say, folded into the compiler (pure: no kopf, no I/O).

* `observe()` turns one watch event (ADDED/MODIFIED/DELETED, or None for an object of a
  listing) into a model event for the compiler, remembering each object's resourceVersion.
* Readiness: nothing may be programmed before the initial lists of all three kinds are in,
  or a half-known cluster would open or close pods by mistake. The agent lists each kind
  itself and feeds the items; `open_gate()` takes what those lists held and the feed is
  `ready` once each of those objects has been observed.
* Overlap: kopf lists the same objects again when its watches start. An object seen at
  the same or a newer resourceVersion is skipped, so the overlap costs nothing and an older
  listing can never roll a newer object back.
* Incarnations: kopf runs one worker per object *uid*, concurrently, so when an object is
  deleted and re-created under the same name (a StatefulSet pod, a policy re-applied) the
  new object's ADDED may be handled before the old one's DELETED. A DELETED of another
  uid, or older than what we hold, is stale and ignored; otherwise the old incarnation's
  delete would remove the new object until its next change.
* Relist repair: after a `410 Gone` kopf lists the kind again, but an object deleted while
  the watch was down is simply absent from the new list: no DELETED event ever comes.
  `relisted()` compares a fresh list with what the feed holds and deletes what is gone.
* Findings: why a NetworkPolicy cannot be enforced as written, for Kubernetes Events.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from ..compile.engine import Compiler
from ..model.events import Delete, Event, Upsert
from ..model.objects import ClusterNetworkPolicy, Direction, NetworkPolicy, Pod
from ..model.parse import parse_object

log = logging.getLogger("policyd.feed")

WatchKind = Literal["Pod", "Namespace", "NetworkPolicy", "ClusterNetworkPolicy", "Node"]
# Nodes: their labels and addresses, for ClusterNetworkPolicy `nodes` peers.
WATCHED_KINDS: tuple[WatchKind, ...] = ("Namespace", "Pod", "NetworkPolicy", "ClusterNetworkPolicy", "Node")
CLUSTER_SCOPED = ("Namespace", "ClusterNetworkPolicy", "Node")
Ref = tuple[str, str]  # (kind, key)


class NotServed(Exception):
    """The API server does not serve this kind (a CRD that is not installed)."""


def ref_of(kind: str, body: dict[str, Any]) -> Ref:
    meta = body.get("metadata") or {}
    ns, name = meta.get("namespace"), meta.get("name", "")
    return (kind, name if kind in CLUSTER_SCOPED else sys.intern(f"{ns}/{name}"))  # the same string as the object's key


def uid_of(body: dict[str, Any]) -> int | None:
    """The object's uid as the hash of its text: only ever compared for equality within this
    process, and a fifth of the memory of the string (100k pods on every node)."""
    uid = (body.get("metadata") or {}).get("uid")
    return hash(uid) if isinstance(uid, str) and uid else None


def rv_int(body: dict[str, Any]) -> int | None:
    """resourceVersions are opaque, but every real API server (etcd revisions) uses integers."""
    try:
        return int((body.get("metadata") or {}).get("resourceVersion", ""))
    except ValueError:
        return None


@dataclass(frozen=True)
class Finding:
    """Something a user must know about a policy: becomes a Warning Event on it."""

    policy: str  # ns/name
    reason: str  # CamelCase, as Kubernetes Event reasons are
    message: str


class Held(NamedTuple):
    """What the feed holds of an object: its resourceVersion and its uid (the incarnation),
    each where the API server gave one."""

    rv: int | None
    uid: int | None  # uid_of: a hash of the uid

    def is_not(self, uid: int | None, rv: int | None) -> bool:
        """Whether a DELETED (with this uid and rv) is of another object than the one held
        under its name: an earlier incarnation's, handled after the new one's ADDED."""
        if uid is not None and self.uid is not None:
            return uid != self.uid
        return rv is not None and self.rv is not None and rv < self.rv


@dataclass
class FeedStats:
    events: int = 0
    rejected: int = 0  # objects that did not parse (kept at their last good version)
    relist_deletes: int = 0
    stale_deletes: int = 0  # DELETED events of an earlier incarnation, ignored
    compile_failures: int = 0  # events that failed inside the compiler (not counted as seen; the next sync rebuilds it)


@dataclass
class ClusterFeed:
    compiler: Compiler
    held: dict[Ref, Held] = field(default_factory=dict)
    pending: set[Ref] | None = None  # None: the gate is not open yet
    ready: bool = False
    invalid: dict[str, tuple[str, ...]] = field(default_factory=dict)  # policy key → problems
    stats: FeedStats = field(default_factory=FeedStats)

    def open_gate(self, listed: Iterable[Ref]) -> None:
        """Every object the initial lists held; ready once all are observed."""
        if self.pending is not None:
            return
        self.pending = set(listed) - set(self.held)
        self._check_ready()

    def _check_ready(self) -> None:
        if not self.ready and self.pending is not None and not self.pending:
            self.ready = True
            log.info("initial lists complete: %d namespaces, %d pods, %d network policies, %d cluster network policies, %d nodes",
                     *(sum(1 for k, _ in self.held if k == kind) for kind in WATCHED_KINDS))

    def observe(self, kind: WatchKind, typ: str | None, body: dict[str, Any]) -> Event | None:
        """One watch event; returns the model event applied to the compiler (None: nothing)."""
        self.stats.events += 1
        ref = ref_of(kind, body)
        if self.pending is not None:
            self.pending.discard(ref)
        try:
            rv, last = rv_int(body), self.held.get(ref)
            known = last.rv if last is not None else None
            if typ == "DELETED":
                if last is not None and last.is_not(uid_of(body), rv):
                    self.stats.stale_deletes += 1
                    log.info("%s %s: a DELETED of an earlier incarnation, handled after the new one's ADDED: ignored", kind, ref[1])
                    return None
                return self._delete(ref)
            if rv is not None and known is not None and rv <= known:
                return None  # seen already (both lists hold it), or older than what we hold
            obj, problems = parse_object(body, f"{kind} {ref[1]}", None, live=True)
            if obj is None or (problems and not isinstance(obj, NetworkPolicy | ClusterNetworkPolicy)):
                # The API server accepted it, so this is our stricter reading: keep what we had.
                self.stats.rejected += 1
                log.warning("%s %s: not understood, keeping the last version: %s", kind, ref[1], "; ".join(map(str, problems)))
                return None
            if isinstance(obj, NetworkPolicy):
                if obj.invalid:
                    self.invalid[ref[1]] = obj.invalid
                else:
                    self.invalid.pop(ref[1], None)
            if isinstance(obj, ClusterNetworkPolicy) and (obj.invalid or obj.notes):
                log.warning("ClusterNetworkPolicy %s: %s", obj.name, "; ".join(
                    [f"invalid, so it denies all its subject's traffic: {'; '.join(obj.invalid)}"] if obj.invalid else list(obj.notes)))
            if self._held_model(kind, ref[1]) == obj:
                # What the model keeps did not change (a Node's status report, a Pod's
                # conditions): the compiler would do nothing, so no event and no sync.
                self.held[ref] = Held(rv, uid_of(body))
                return None
            event = Upsert(obj)
            if self._compile(event):
                self.held[ref] = Held(rv, uid_of(body))  # seen only once the compiler took it
            return event
        finally:
            self._check_ready()

    def _held_model(self, kind: WatchKind, key: str) -> object:
        """The compiler's model of the object (None: none held)."""
        store = self.compiler.store
        held: dict[str, dict[Any, Any]] = {"Pod": store.pods, "Namespace": store.namespaces, "NetworkPolicy": store.policies,
                                           "ClusterNetworkPolicy": store.cluster_policies, "Node": store.nodes}
        return held[kind].get(key)

    def _delete(self, ref: Ref) -> Event | None:
        if ref not in self.held:
            return None
        event = Delete(ref[0], ref[1])  # type: ignore[arg-type]
        if self._compile(event):
            del self.held[ref]
            if ref[0] == "NetworkPolicy":
                self.invalid.pop(ref[1], None)
        return event

    def _compile(self, event: Event) -> bool:
        """The compiler takes the event; an exception in it (a bug) is logged and counted, the
        compiler is left dirty (the next sync, asked for as for any event, rebuilds it from
        its store, which holds what the event said) and the object does not count as seen."""
        try:
            self.compiler.apply(event)
        except Exception:  # noqa: BLE001 - a bug in the compiler must not stop the watch
            self.stats.compile_failures += 1
            log.exception("the compiler failed on %s; it is rebuilt from its store at the next sync", event)
            return False
        return True

    def relisted(self, kind: WatchKind, present: set[Ref], list_rv: int | None) -> list[Event]:
        """A fresh list of `kind` (resourceVersion `list_rv`) held the objects `present`:
        delete what it no longer holds. An object we saw at a newer version than the list
        was created after it: kept."""
        gone = []
        for ref, last in list(self.held.items()):
            if ref[0] != kind or ref in present:
                continue
            if list_rv is not None and last.rv is not None and last.rv > list_rv:
                continue
            gone.append(ref)
        events = [e for e in (self._delete(r) for r in gone) if e is not None]
        self.stats.relist_deletes += len(events)
        for e in events:
            log.warning("%s %s was deleted while the watch was down: removed after a relist", e.kind, e.key)  # type: ignore[union-attr]
        return events

    # --- findings ---------------------------------------------------------------------

    def local_pods_selected(self, policy: NetworkPolicy) -> list[Pod]:
        c = self.compiler
        return [p for p in c.store.pods_matching(policy.namespace, policy.pod_selector) if c.is_local(p)]

    def findings(self, policy: NetworkPolicy) -> list[Finding]:
        """Why `policy` cannot be enforced as written on this node's pods (none when it can,
        or when it selects no local pod: the node that runs them reports)."""
        selected = self.local_pods_selected(policy)
        if not selected:
            return []
        if policy.invalid:
            return [Finding(policy.key, "PolicyInvalid",
                            "not enforceable as written, so its pods are isolated and it allows nothing: " + "; ".join(policy.invalid))]
        out = [Finding(policy.key, "PolicyReadLeniently", note) for note in policy.notes]
        for i, rule in enumerate(policy.ingress if Direction.INGRESS in policy.policy_types else ()):
            for j, port in enumerate(rule.ports):
                if not isinstance(port.port, str):
                    continue
                missing = [p.key for p in selected if p.resolve_port(port.port, port.protocol) is None]
                if missing:
                    out.append(Finding(policy.key, "NamedPortUnresolved",
                                       f"ingress[{i}].ports[{j}]: no container port named {port.port!r} ({port.protocol}) on "
                                       f"{', '.join(sorted(missing)[:5])}{' …' if len(missing) > 5 else ''}; the rule allows nothing to those pods"))
        return out
