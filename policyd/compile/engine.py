"""The incremental compiler: events in, per-pod plans and shared set contents out.

Calico Felix's calculation graph in miniature: every set is named by its content (spec),
shared by all rules that use it and reference counted by the plans that use it. An event
recomputes only what it can affect:

* pod added/changed/deleted → that pod's entries in the live sets of its namespace scope,
  and its own plan if it is local;
* namespace relabelled → the namespace-selector sets, for that namespace's pods only;
* policy added/changed/deleted → the plans of local pods of that namespace that the old or
  new podSelector selects;
* ClusterNetworkPolicy added/changed/deleted → the plans of the local pods its old or new
  subject selects (and a namespace relabelled → its local pods' plans, when any exists);
* node added/changed/deleted → its addresses in the live node-selector sets (`nodes` peers).

`take_changes()` hands the dirty pod plans and sets to the renderer.

Failure never stays: an event that raises part way (a bug) leaves the store holding the
object but the plans and sets perhaps half-changed, so the compiler marks itself `dirty` and
the event's caller sees the exception (the object does not count as seen); the next sync
calls `rebuild()`, which derives every plan and set from the store again. `rebuild(compare=
True)` is also the periodic audit: a from-scratch compile compared with the incremental one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..model.events import Event, Upsert
from ..model.objects import ClusterNetworkPolicy, Namespace, NetworkPolicy, Node, Pod, PodKey, PolicyKey
from ..state.store import ClusterStore
from .changes import SetChangeLog
from .plan import BlockSetSpec, DomainSetSpec, Entry, NodeSetSpec, PodPlan, PodSetSpec, SetSpec
from .pod import plan_pod


@dataclass
class Changes(SetChangeLog[SetSpec, Entry]):
    """What changed since the last take: pod keys, and sets with their entry deltas (read
    sets without a delta whole from the compiler)."""

    pods: set[PodKey] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.pods or self.sets)


@dataclass
class LiveSet:
    """A set's entries, counted per contributing pod or node (two pods may share an address
    while one of them is going away), so that one member's update is O(its entries). Keys:
    pod keys (`ns/name`), or node names for node sets."""

    refs: int
    members: dict[str, frozenset[Entry]] = field(default_factory=dict)
    counts: dict[Entry, int] = field(default_factory=dict)

    def entries(self) -> frozenset[Entry]:
        return frozenset(self.counts)

    def put(self, key: str, entries: frozenset[Entry]) -> tuple[list[Entry], list[Entry]]:
        """Replace `key`'s entries; returns the set's (added, removed) entries."""
        old = self.members.pop(key, frozenset())
        if entries:
            self.members[key] = entries
        added, removed = [], []
        for e in entries - old:
            n = self.counts.get(e, 0)
            self.counts[e] = n + 1
            if n == 0:
                added.append(e)
        for e in old - entries:
            n = self.counts[e] - 1
            if n:
                self.counts[e] = n
            else:
                del self.counts[e]
                removed.append(e)
        return added, removed


def pod_entries(spec: PodSetSpec, pod: Pod) -> frozenset[Entry]:
    if not pod.addressable:
        return frozenset()
    if spec.port_name is None:
        return frozenset(pod.ips)
    port = pod.resolve_port(spec.port_name, spec.protocol or "TCP")
    return frozenset((ip, port) for ip in pod.ips) if port is not None else frozenset()


def node_entries(spec: NodeSetSpec, node: Node) -> frozenset[Entry]:
    return frozenset(node.addresses) if spec.node_selector.matches(node.labels) else frozenset()


class Compiler:
    """`node` None compiles every pod (what-if tools); otherwise only that node's pods."""

    def __init__(self, node: str | None = None, store: ClusterStore | None = None) -> None:
        self.node = node
        self.store = store or ClusterStore()
        self.plans: dict[PodKey, PodPlan] = {}
        self.sets: dict[SetSpec, LiveSet] = {}
        # Live pod sets by the namespaces their scope covers (fixed or by selector).
        self._sets_by_ns: dict[str, set[PodSetSpec]] = defaultdict(set)
        self._nssel_sets: set[PodSetSpec] = set()
        self._node_sets: set[NodeSetSpec] = set()
        self._changes = Changes()
        self.dirty = False  # an event failed part way: derived state must be rebuilt from the store

    # --- events ---------------------------------------------------------------------

    def upsert_pod(self, pod: Pod) -> None:
        old = self.store.put_pod(pod)
        if old == pod:
            return
        for spec in list(self._sets_by_ns.get(pod.namespace, ())):
            self._set_member(spec, pod)
        self._replan(pod.key)

    def delete_pod(self, key: PodKey) -> None:
        old = self.store.remove_pod(key)
        if old is None:
            return
        for spec in list(self._sets_by_ns.get(old.namespace, ())):
            self._put(spec, key, frozenset())
        self._replan(key)

    def upsert_namespace(self, ns: Namespace) -> None:
        old = self.store.put_namespace(ns)
        if old is not None and old.labels == ns.labels:
            return
        self._rescope_namespace(ns.name)
        self._replan_namespace(ns.name)

    def delete_namespace(self, name: str) -> None:
        if self.store.remove_namespace(name) is not None:
            self._rescope_namespace(name)
            self._replan_namespace(name)

    def upsert_cluster_policy(self, cnp: ClusterNetworkPolicy) -> None:
        old = self.store.put_cluster_policy(cnp)
        if old != cnp:
            self._replan_subjects(old, cnp)

    def delete_cluster_policy(self, name: str) -> None:
        old = self.store.remove_cluster_policy(name)
        if old is not None:
            self._replan_subjects(old, None)

    def upsert_node(self, node: Node) -> None:
        old = self.store.put_node(node)
        if old == node:
            return
        for spec in self._node_sets:
            self._put(spec, node.name, node_entries(spec, node))

    def delete_node(self, name: str) -> None:
        if self.store.remove_node(name) is not None:
            for spec in self._node_sets:
                self._put(spec, name, frozenset())

    def upsert_policy(self, policy: NetworkPolicy) -> None:
        old = self.store.put_policy(policy)
        if old == policy:
            return
        self._replan_policy(old, policy)

    def delete_policy(self, key: PolicyKey) -> None:
        old = self.store.remove_policy(key)
        if old is not None:
            self._replan_policy(old, None)

    def apply(self, event: Event) -> None:
        """One source event. An exception marks the compiler dirty (see the module's
        docstring) and reaches the caller."""
        try:
            self._apply(event)
        except Exception:
            self.dirty = True
            raise

    def rebuild(self, compare: bool = False) -> bool:
        """Every plan and set derived from the store again, from scratch (the store holds what
        the events said, also after one failed part way); everything counts as changed, and
        the compiler is clean. With `compare`: whether the incremental state was equal (it
        is replaced either way); without, True."""
        s = self.store
        fresh = compile_all(self.node, s.namespaces.values(), s.pods.values(), s.policies.values(), s.cluster_policies.values(),
                            s.nodes.values())
        same = compare and not self.dirty and fresh.plans == self.plans and fresh.sets.keys() == self.sets.keys() \
            and all(fresh.set_entries(spec) == self.set_entries(spec) for spec in fresh.sets)
        changes = self.take_changes()
        changes.pods |= set(self.plans) | set(fresh.plans)
        for spec in set(self.sets) | set(fresh.sets):
            changes.set_replaced(spec)
        self.plans, self.sets = fresh.plans, fresh.sets
        self._sets_by_ns, self._nssel_sets, self._node_sets = fresh._sets_by_ns, fresh._nssel_sets, fresh._node_sets
        self._changes = changes
        self.dirty = False
        return same or not compare

    def _apply(self, event: Event) -> None:
        if isinstance(event, Upsert):
            obj = event.obj
            if isinstance(obj, Pod):
                self.upsert_pod(obj)
            elif isinstance(obj, Node):
                self.upsert_node(obj)
            elif isinstance(obj, Namespace):
                self.upsert_namespace(obj)
            elif isinstance(obj, NetworkPolicy):
                self.upsert_policy(obj)
            elif isinstance(obj, ClusterNetworkPolicy):
                self.upsert_cluster_policy(obj)
        elif event.kind == "Pod":
            self.delete_pod(PodKey(event.key))
        elif event.kind == "Namespace":
            self.delete_namespace(event.key)
        elif event.kind == "NetworkPolicy":
            self.delete_policy(PolicyKey(event.key))
        elif event.kind == "ClusterNetworkPolicy":
            self.delete_cluster_policy(event.key)
        elif event.kind == "Node":
            self.delete_node(event.key)

    def take_changes(self) -> Changes:
        out, self._changes = self._changes, Changes()
        return out

    # --- queries --------------------------------------------------------------------

    def is_local(self, pod: Pod) -> bool:
        return pod.addressable and (self.node is None or pod.node == self.node)

    def set_entries(self, spec: SetSpec) -> frozenset[Entry]:
        live = self.sets.get(spec)
        return live.entries() if live is not None else frozenset()

    # --- internals ------------------------------------------------------------------

    def _set_member(self, spec: PodSetSpec, pod: Pod) -> None:
        entries = pod_entries(spec, pod) if spec.pod_selector.matches(pod.labels) else frozenset()
        self._put(spec, pod.key, entries)

    def _put(self, spec: SetSpec, key: str, entries: frozenset[Entry]) -> None:
        live = self.sets[spec]
        if live.members.get(key, frozenset()) == entries:
            return
        added, removed = live.put(key, entries)
        if added or removed:
            self._changes.set_delta(spec, added, removed)

    def _scope_namespaces(self, spec: PodSetSpec) -> Iterable[str]:
        if spec.namespace is not None:
            return [spec.namespace]
        return self.store.namespaces_matching(spec.namespace_selector)  # type: ignore[arg-type]

    def _rescope_namespace(self, name: str) -> None:
        """Namespace labels changed: namespace-selector sets gain or lose its pods."""
        labels = self.store.namespace_labels(name)
        exists = name in self.store.namespaces
        covered = self._sets_by_ns[name]
        for spec in self._nssel_sets:
            now = exists and spec.namespace_selector.matches(labels)  # type: ignore[union-attr]
            if now == (spec in covered):
                continue
            live = self.sets[spec]
            if now:
                covered.add(spec)
                for pod in self.store.pods_matching(name, spec.pod_selector):
                    self._set_member(spec, pod)
            else:
                covered.discard(spec)
                for key in [k for k in live.members if k.startswith(name + "/")]:
                    self._put(spec, key, frozenset())

    def _replan_policy(self, old: NetworkPolicy | None, new: NetworkPolicy | None) -> None:
        ns = (new or old).namespace  # type: ignore[union-attr]
        keys: set[PodKey] = set()
        for pol in (old, new):
            if pol is not None:
                keys.update(p.key for p in self.store.pods_matching(ns, pol.pod_selector) if self.is_local(p))
        for key in sorted(keys):
            self._replan(key)

    def _replan_subjects(self, old: ClusterNetworkPolicy | None, new: ClusterNetworkPolicy | None) -> None:
        keys: set[PodKey] = set()
        for cnp in (old, new):
            if cnp is None:
                continue
            for ns in self.store.pods_by_ns:  # a namespace not (yet) known has no labels
                if cnp.namespace_selector.matches(self.store.namespace_labels(ns)):
                    keys.update(p.key for p in self.store.pods_matching(ns, cnp.pod_selector) if self.is_local(p))
        for key in sorted(keys):
            self._replan(key)

    def _replan_namespace(self, name: str) -> None:
        """A namespace's labels decide which ClusterNetworkPolicies have its pods as subject."""
        if not self.store.cluster_policies:
            return
        for key in sorted(self.store.pods_by_ns.get(name, ())):
            self._replan(key)

    def _replan(self, key: PodKey) -> None:
        pod = self.store.pods.get(key)
        old = self.plans.get(key)
        new = (
            plan_pod(pod, self.store.policies_selecting(pod), self.store.cluster_policies_selecting(pod))
            if pod is not None and self.is_local(pod) else None
        )
        if old == new:
            return
        old_specs = old.set_specs() if old else set()
        new_specs = new.set_specs() if new else set()
        for spec in new_specs - old_specs:
            self._ref(spec)
        if new is None:
            del self.plans[key]
        else:
            self.plans[key] = new
        for spec in old_specs - new_specs:
            self._unref(spec)
        self._changes.pods.add(key)

    def _ref(self, spec: SetSpec) -> None:
        live = self.sets.get(spec)
        if live is not None:
            live.refs += 1
            return
        live = self.sets[spec] = LiveSet(1)
        self._changes.set_replaced(spec)
        if isinstance(spec, BlockSetSpec | DomainSetSpec):
            return  # (its content is the spec itself, or learned in the data path)
        if isinstance(spec, NodeSetSpec):
            self._node_sets.add(spec)
            for node in self.store.nodes_matching(spec.node_selector):
                live.put(node.name, node_entries(spec, node))
            return
        if spec.namespace is None:
            self._nssel_sets.add(spec)
        for ns in self._scope_namespaces(spec):
            self._sets_by_ns[ns].add(spec)
            for pod in self.store.pods_matching(ns, spec.pod_selector):
                live.put(pod.key, pod_entries(spec, pod))

    def _unref(self, spec: SetSpec) -> None:
        live = self.sets[spec]
        live.refs -= 1
        if live.refs:
            return
        del self.sets[spec]
        self._changes.set_replaced(spec)
        if isinstance(spec, NodeSetSpec):
            self._node_sets.discard(spec)
        if isinstance(spec, PodSetSpec):
            self._nssel_sets.discard(spec)
            for covered in self._sets_by_ns.values():
                covered.discard(spec)


def compile_all(node: str | None, namespaces: Iterable[Namespace], pods: Iterable[Pod], policies: Iterable[NetworkPolicy],
                cluster_policies: Iterable[ClusterNetworkPolicy] = (), nodes: Iterable[Node] = ()) -> Compiler:
    """From scratch: namespaces, then policies, then pods (any order gives the same result)."""
    c = Compiler(node)
    for n in nodes:
        c.upsert_node(n)
    for ns in namespaces:
        c.upsert_namespace(ns)
    for cnp in cluster_policies:
        c.upsert_cluster_policy(cnp)
    for pol in policies:
        c.upsert_policy(pol)
    for pod in pods:
        c.upsert_pod(pod)
    c.take_changes()
    return c
