"""From observed flows to least-privilege NetworkPolicies (pure).

* A *workload* is the pods of one namespace that share their stable labels: a pod's labels
  without those a controller adds per revision or per pod (`pod-template-hash`, …), which is
  what its controller's pod template gives it. Its policy selects it by those labels.
* Each workload gets one policy, Ingress and Egress, admitting exactly the peers and ports
  seen: a pod peer as its workload's labels (with `kubernetes.io/metadata.name` for another
  namespace), any other address as a /32 (/128) ipBlock; a port by the name the destination
  pods declare for it, when they all declare the same one. Egress to the cluster DNS
  (kube-system, `k8s-app: kube-dns`, port 53) is added unless asked not to.
* Never a pod name or pod address: a replaced pod keeps its workload's labels.
* What NetworkPolicy cannot say is reported, not dropped silently: ICMP flows (a policy
  names TCP, UDP and SCTP ports only, so an isolated pod answers no ping) and workloads
  without labels (no selector picks them alone).
"""

from __future__ import annotations

import ipaddress
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from ..model.objects import AUDIT_ANNOTATION, Pod
from ..observe.flows import FlowRecord

# Labels a controller sets per revision or per pod: never part of a workload's identity.
VOLATILE_LABELS = frozenset({
    "pod-template-hash", "controller-revision-hash", "pod-template-generation",
    "statefulset.kubernetes.io/pod-name", "apps.kubernetes.io/pod-index",
    "controller-uid", "batch.kubernetes.io/controller-uid", "batch.kubernetes.io/job-completion-index",
    "job-name", "batch.kubernetes.io/job-name",
})
SYSTEM_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")
NAME_LABELS = ("app.kubernetes.io/name", "app", "k8s-app", "name")
DNS_PEER = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}
DNS_PORTS = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
PORT_PROTOCOLS = ("TCP", "UDP", "SCTP")


@dataclass(frozen=True)
class Workload:
    namespace: str
    labels: tuple[tuple[str, str], ...]

    @property
    def selector(self) -> dict[str, Any]:
        return {"matchLabels": dict(self.labels)} if self.labels else {}


@dataclass
class Proposal:
    policies: list[dict[str, Any]]  # NetworkPolicy manifests
    notes: list[str] = field(default_factory=list)  # what the proposal could not express, and why
    admitted: dict[str, int] = field(default_factory=dict)  # policy name (ns/name) → observed flows it admits


def workload_of(pod: Pod) -> Workload:
    return Workload(pod.namespace, tuple(sorted((k, v) for k, v in pod.labels.items() if k not in VOLATILE_LABELS)))


def _dns_name(text: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return name[:200].strip("-") or "workload"


def workload_name(w: Workload, pods: list[Pod]) -> str:
    labels = dict(w.labels)
    for key in NAME_LABELS:
        if labels.get(key):
            return _dns_name(labels[key])
    first = sorted(p.name for p in pods)[0]
    return _dns_name(re.sub(r"(-[a-z0-9]{5,10})+$", "", first))


def _port_entry(protocol: str, port: int, dst_pods: list[Pod]) -> dict[str, Any]:
    """The port as the destination pods name it, when every one declares it under one name."""
    names = {next((cp.name for cp in p.ports if cp.port == port and cp.protocol == protocol), None) for p in dst_pods}
    name = names.pop() if len(names) == 1 else None
    return {"protocol": protocol, "port": name or port}


def _host(address: str) -> dict[str, Any]:
    ip = ipaddress.ip_address(address)
    return {"ipBlock": {"cidr": f"{ip}/{ip.max_prefixlen}"}}


def propose(flows: list[FlowRecord], pods: list[Pod], only: list[str] | None = None,
            dns: bool = True, default_deny: bool = False, audit: bool = False) -> Proposal:
    """Policies for every workload of the namespaces `only` (default: every namespace with
    pods but the system ones) admitting the observed flows and nothing else."""
    by_key: dict[str, Pod] = {p.key: p for p in pods}
    chosen = set(only) if only else {p.namespace for p in pods if p.namespace not in SYSTEM_NAMESPACES}
    members: dict[Workload, list[Pod]] = defaultdict(list)
    for p in pods:
        if p.addressable:
            members[workload_of(p)].append(p)
    targets = sorted((w for w in members if w.namespace in chosen), key=lambda w: (w.namespace, w.labels))
    notes: list[str] = []

    # peer (as a policy peer, JSON text for grouping) → ports, per target workload and direction
    rules: dict[tuple[Workload, str], dict[str, set[tuple[str, int]]]] = defaultdict(lambda: defaultdict(set))
    peers: dict[str, dict[str, Any]] = {}
    flow_of: dict[tuple[Workload, str], list[FlowRecord]] = defaultdict(list)
    icmp: dict[Workload, int] = defaultdict(int)

    def peer_of(key: str, seen_from: Workload) -> dict[str, Any]:
        pod = by_key.get(key)
        if pod is None:
            return _host(key)
        w = workload_of(pod)
        peer: dict[str, Any] = {"podSelector": w.selector}
        if w.namespace != seen_from.namespace:
            peer["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": w.namespace}}
        return peer

    for f in flows:
        src, dst = by_key.get(f.src), by_key.get(f.dst)
        for direction, own, other in (("ingress", dst, f.src), ("egress", src, f.dst)):
            if own is None or not own.addressable:
                continue
            w = workload_of(own)
            if w.namespace not in chosen:
                continue
            if f.protocol not in PORT_PROTOCOLS or f.port is None:
                icmp[w] += 1
                continue
            peer = peer_of(other, w)
            text = repr(sorted(peer.items()))
            peers[text] = peer
            rules[(w, direction)][text].add((f.protocol, f.port))
            flow_of[(w, direction)].append(f)

    policies: list[dict[str, Any]] = []
    admitted: dict[str, int] = {}
    used_names: dict[str, set[str]] = defaultdict(set)
    for w in targets:
        pods_w = members[w]
        if not w.labels and any(workload_of(p) != w for p in members_in(members, w.namespace)):
            notes.append(f"{w.namespace}: pods without labels ({', '.join(sorted(p.name for p in pods_w))}): no selector picks them "
                         "alone, so no policy is proposed for them; label them and record again")
            continue
        name = "advise-" + workload_name(w, pods_w)
        while name in used_names[w.namespace]:
            name += "-x"
        used_names[w.namespace].add(name)
        spec: dict[str, Any] = {"podSelector": w.selector, "policyTypes": ["Ingress", "Egress"]}
        for direction in ("ingress", "egress"):
            out = []
            for text, ports in sorted(rules.get((w, direction), {}).items()):
                peer = peers[text]
                dst_pods = pods_w if direction == "ingress" else _pods_of(peer, w, members)
                entries = [_port_entry(proto, port, dst_pods) for proto, port in sorted(ports)]
                out.append({"from" if direction == "ingress" else "to": [peer], "ports": entries})
            if direction == "egress" and dns:
                out.append({"to": [DNS_PEER], "ports": DNS_PORTS})
            spec[direction] = out
        meta: dict[str, Any] = {"name": name, "namespace": w.namespace, "labels": {"policyd.io/advised": "true"}}
        if audit:
            meta["annotations"] = {AUDIT_ANNOTATION: "true"}
        policies.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta, "spec": spec})
        admitted[f"{w.namespace}/{name}"] = len({f.key for d in ("ingress", "egress") for f in flow_of.get((w, d), [])})
        if icmp.get(w):
            notes.append(f"{w.namespace}/{name}: {icmp[w]} ICMP flow(s) seen; NetworkPolicy ports name TCP, UDP and SCTP only, "
                         "so once isolated these pods answer no ping")
        if not flow_of.get((w, "ingress")) and not flow_of.get((w, "egress")):
            notes.append(f"{w.namespace}/{name}: no flow of its pods was seen; the policy admits nothing"
                         + (" but DNS" if dns else "") + " (record longer if the workload was idle)")
    if default_deny:
        for ns in sorted(chosen):
            meta = {"name": "advise-default-deny", "namespace": ns, "labels": {"policyd.io/advised": "true"}}
            if audit:
                meta["annotations"] = {AUDIT_ANNOTATION: "true"}
            policies.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta,
                             "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}})
    return Proposal(policies, notes, admitted)


def members_in(members: dict[Workload, list[Pod]], namespace: str) -> list[Pod]:
    return [p for w, ps in members.items() if w.namespace == namespace for p in ps]


def _pods_of(peer: dict[str, Any], seen_from: Workload, members: dict[Workload, list[Pod]]) -> list[Pod]:
    """The pods a pod peer of `seen_from`'s policy names (none for an ipBlock)."""
    if "podSelector" not in peer:
        return []
    ns = (peer.get("namespaceSelector") or {}).get("matchLabels", {}).get("kubernetes.io/metadata.name", seen_from.namespace)
    labels = peer["podSelector"].get("matchLabels", {})
    return [p for w, ps in members.items() if w.namespace == ns for p in ps if all(p.labels.get(k) == v for k, v in labels.items())]
