"""The proof of a proposal, with the policy engine (pure): with the proposed policies added
to what the cluster holds (and enforced, even when proposed in audit mode), is every observed
flow still allowed, and what else is allowed between workloads that was never seen?"""

from __future__ import annotations

import copy
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from ..compile.engine import compile_all
from ..compile.evaluate import Endpoint, Evaluator
from ..model.objects import AUDIT_ANNOTATION, NetworkPolicy, Pod
from ..model.parse import parse_object
from ..model.problems import InvalidInput
from ..observe.flows import FlowRecord
from ..whatif.matrix import endpoint, pairs
from ..whatif.world import World
from .propose import PORT_PROTOCOLS, Workload, workload_of


@dataclass
class Proof:
    checked: int = 0  # observed flows the engine judged (ICMP ones are not: no policy can admit them)
    denied: list[FlowRecord] = field(default_factory=list)  # observed flows the proposal would drop
    beyond: list[tuple[str, str, str]] = field(default_factory=list)  # (source workload, destination workload, service) never seen

    @property
    def holds(self) -> bool:
        return not self.denied


def enforced(policies: list[dict[str, Any]]) -> list[NetworkPolicy]:
    """The proposed manifests as the engine reads them, without the audit annotation."""
    out = []
    for i, raw in enumerate(policies):
        doc = copy.deepcopy(raw)
        (doc["metadata"].get("annotations") or {}).pop(AUDIT_ANNOTATION, None)
        obj, problems = parse_object(doc, "<advise>", i)
        if problems:
            raise InvalidInput(problems)
        assert isinstance(obj, NetworkPolicy)
        out.append(obj)
    return out


def _name(w: Workload) -> str:
    return f"{w.namespace}/" + (",".join(f"{k}={v}" for k, v in w.labels) or "(no labels)")


def prove(world: World, flows: list[FlowRecord], policies: list[dict[str, Any]], namespaces: set[str]) -> Proof:
    compiler = compile_all(None, world.namespaces, world.pods, world.policies + enforced(policies),
                           world.cluster_policies, world.nodes)
    ev = Evaluator(compiler)
    by_key: dict[str, Pod] = {p.key: p for p in world.pods}
    proof = Proof()

    def at(ref: str) -> Endpoint:
        pod = by_key.get(ref)
        return endpoint(pod) if pod is not None and pod.addressable else Endpoint(ipaddress.ip_address(ref))

    seen: set[tuple[Workload, Workload, str, int]] = set()
    for f in flows:
        if f.protocol not in PORT_PROTOCOLS or f.port is None:
            continue
        src, dst = at(f.src), at(f.dst)
        if src.ip.version != dst.ip.version:
            continue
        proof.checked += 1
        if not ev.verdict(src, dst, f.protocol, f.port).allowed:
            proof.denied.append(f)
        if src.pod is not None and dst.pod is not None:
            seen.add((workload_of(src.pod), workload_of(dst.pod), f.protocol, f.port))

    # Over-breadth, workload to workload, on every service some flow used.
    pods: list[Pod] = [p for p in world.pods if p.addressable]
    group: dict[str, Workload] = {p.key: workload_of(p) for p in pods}
    for protocol, port in sorted({(proto, prt) for _, _, proto, prt in seen}):
        found: set[tuple[Workload, Workload]] = set()
        _, rows = pairs(compiler, pods, protocol, port)
        for s, reached in rows:
            for d in reached:
                ws, wd = group[s], group[d]
                if s == d or (ws.namespace not in namespaces and wd.namespace not in namespaces):
                    continue
                if (ws, wd, protocol, port) not in seen:
                    found.add((ws, wd))
        proof.beyond += [(_name(a), _name(b), f"{protocol}/{port}") for a, b in sorted(found, key=lambda x: (_name(x[0]), _name(x[1])))]
    return proof
