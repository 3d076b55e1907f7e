"""The cluster picture in memory: namespaces, pods, policies, nodes (their labels and
addresses, for ClusterNetworkPolicy `nodes` peers), and the label indexes that make "which
pods of namespace N match selector S" cheap (no scan of every pod)."""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable

from ..model.objects import ClusterNetworkPolicy, IPAddress, Namespace, NetworkPolicy, Node, Pod, PodKey, PolicyKey
from ..model.selectors import LabelSelector


class ClusterStore:
    def __init__(self) -> None:
        self.namespaces: dict[str, Namespace] = {}
        self.pods: dict[PodKey, Pod] = {}
        self.policies: dict[PolicyKey, NetworkPolicy] = {}
        self.pods_by_ns: dict[str, set[PodKey]] = defaultdict(set)
        self.policies_by_ns: dict[str, set[PolicyKey]] = defaultdict(set)
        self.cluster_policies: dict[str, ClusterNetworkPolicy] = {}
        self.nodes: dict[str, Node] = {}
        # namespace → the ClusterNetworkPolicies whose subject's namespace selector matches
        # it (filled on demand; dropped when a namespace or a cluster policy changes).
        self._cnps_by_ns: dict[str, list[ClusterNetworkPolicy]] = {}
        # (namespace, label key, label value) → pods: narrows equality selectors.
        self._by_label: dict[tuple[str, str, str], set[PodKey]] = defaultdict(set)
        # address → addressable pods: kept only once someone asks (the drop log names the
        # pods of the packets it logs), so an agent without it pays no memory for it.
        self._by_ip: dict[IPAddress, set[PodKey]] | None = None

    # --- writes ---------------------------------------------------------------------

    def put_pod(self, pod: Pod) -> Pod | None:
        old = self.pods.get(pod.key)
        if old is not None:
            self._unindex(old)
        self.pods[pod.key] = pod
        self.pods_by_ns[pod.namespace].add(pod.key)
        for k, v in pod.labels.items():
            self._by_label[(pod.namespace, k, v)].add(pod.key)
        self._index_ips(pod)
        return old

    def remove_pod(self, key: PodKey) -> Pod | None:
        old = self.pods.pop(key, None)
        if old is not None:
            self._unindex(old)
            self.pods_by_ns[old.namespace].discard(key)
        return old

    def _unindex(self, pod: Pod) -> None:
        for k, v in pod.labels.items():
            bucket = self._by_label.get((pod.namespace, k, v))
            if bucket is not None:
                bucket.discard(pod.key)
                if not bucket:
                    del self._by_label[(pod.namespace, k, v)]
        if self._by_ip is not None and pod.addressable:
            for ip in pod.ips:
                keys = self._by_ip.get(ip)
                if keys is not None:
                    keys.discard(pod.key)
                    if not keys:
                        del self._by_ip[ip]

    def _index_ips(self, pod: Pod) -> None:
        if self._by_ip is not None and pod.addressable:
            for ip in pod.ips:
                self._by_ip.setdefault(ip, set()).add(pod.key)

    def index_addresses(self) -> None:
        """Keep the address → pod index from now on (built once from what is held)."""
        if self._by_ip is None:
            self._by_ip = {}
            for pod in self.pods.values():
                self._index_ips(pod)

    def pod_at(self, address: str) -> PodKey | None:
        """The one addressable pod holding `address`; None when none or several do (a
        host-network address, a reused one in transition): never a guess. Needs
        `index_addresses()` first."""
        if self._by_ip is None:
            raise RuntimeError("pod_at needs index_addresses() first")
        try:
            keys = self._by_ip.get(ipaddress.ip_address(address))
        except ValueError:
            return None
        return next(iter(keys)) if keys is not None and len(keys) == 1 else None

    def put_namespace(self, ns: Namespace) -> Namespace | None:
        old = self.namespaces.get(ns.name)
        self.namespaces[ns.name] = ns
        self._cnps_by_ns.pop(ns.name, None)
        return old

    def remove_namespace(self, name: str) -> Namespace | None:
        self._cnps_by_ns.pop(name, None)
        return self.namespaces.pop(name, None)

    def put_cluster_policy(self, cnp: ClusterNetworkPolicy) -> ClusterNetworkPolicy | None:
        old = self.cluster_policies.get(cnp.name)
        self.cluster_policies[cnp.name] = cnp
        self._cnps_by_ns.clear()
        return old

    def remove_cluster_policy(self, name: str) -> ClusterNetworkPolicy | None:
        old = self.cluster_policies.pop(name, None)
        if old is not None:
            self._cnps_by_ns.clear()
        return old

    def put_node(self, node: Node) -> Node | None:
        old = self.nodes.get(node.name)
        self.nodes[node.name] = node
        return old

    def remove_node(self, name: str) -> Node | None:
        return self.nodes.pop(name, None)

    def put_policy(self, policy: NetworkPolicy) -> NetworkPolicy | None:
        old = self.policies.get(policy.key)
        self.policies[policy.key] = policy
        self.policies_by_ns[policy.namespace].add(policy.key)
        return old

    def remove_policy(self, key: PolicyKey) -> NetworkPolicy | None:
        old = self.policies.pop(key, None)
        if old is not None:
            self.policies_by_ns[old.namespace].discard(key)
        return old

    # --- queries --------------------------------------------------------------------

    def namespace_labels(self, name: str) -> dict[str, str]:
        ns = self.namespaces.get(name)
        return ns.labels if ns is not None else {}

    def nodes_matching(self, selector: LabelSelector) -> list[Node]:
        return [n for n in self.nodes.values() if selector.matches(n.labels)]

    def node_at(self, address: IPAddress) -> str | None:
        """The node holding `address` (InternalIP or ExternalIP), for explain to name it."""
        return next((n.name for n in self.nodes.values() if address in n.addresses), None)

    def namespaces_matching(self, selector: LabelSelector) -> Iterable[str]:
        return [n for n, ns in self.namespaces.items() if selector.matches(ns.labels)]

    def pods_matching(self, namespace: str, selector: LabelSelector) -> list[Pod]:
        """Pods of `namespace` whose labels match: the smallest equality bucket, then filter."""
        candidates: set[PodKey] | None = None
        for k, v in selector.equality_terms():
            bucket = self._by_label.get((namespace, k, v), set())
            if candidates is None or len(bucket) < len(candidates):
                candidates = bucket
        if candidates is None:
            candidates = self.pods_by_ns.get(namespace, set())
        pods = (self.pods[k] for k in candidates)
        return [p for p in pods if selector.matches(p.labels)]

    def cluster_policies_selecting(self, pod: Pod) -> list[ClusterNetworkPolicy]:
        """The ClusterNetworkPolicies whose subject is `pod`, by name (host-network pods
        are never subjects; the caller compiles only addressable pods)."""
        in_ns = self._cnps_by_ns.get(pod.namespace)
        if in_ns is None:
            labels = self.namespace_labels(pod.namespace)
            in_ns = self._cnps_by_ns[pod.namespace] = sorted(
                (c for c in self.cluster_policies.values() if c.namespace_selector.matches(labels)), key=lambda c: c.name
            )
        return [c for c in in_ns if c.pod_selector.matches(pod.labels)]

    def policies_selecting(self, pod: Pod) -> list[NetworkPolicy]:
        out = []
        for key in self.policies_by_ns.get(pod.namespace, ()):
            pol = self.policies[key]
            if pol.pod_selector.matches(pod.labels):
                out.append(pol)
        return sorted(out, key=lambda p: p.key)


__all__ = ["ClusterStore"]
