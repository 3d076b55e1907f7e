"""Load a cluster picture for the what-if tools: manifests → validated, addressed objects."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..compile.engine import Compiler, compile_all
from ..model.addressing import DEFAULT_CLUSTER_CIDR, DEFAULT_NODE_PREFIX, allocate
from ..model.manifests import load
from ..model.objects import ClusterNetworkPolicy, IPNetwork, Namespace, NetworkPolicy, Node, Pod
from ..model.problems import InvalidInput


@dataclass
class World:
    namespaces: list[Namespace]
    pods: list[Pod]
    policies: list[NetworkPolicy]
    node_cidrs: dict[str, IPNetwork]
    cluster_policies: list[ClusterNetworkPolicy] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)  # Node objects given (labels, addresses: `nodes` peers)

    def compile(self, node: str | None = None) -> Compiler:
        return compile_all(node, self.namespaces, self.pods, self.policies, self.cluster_policies, self.nodes)

    def find_pod(self, ref: str) -> Pod | None:
        ns, _, name = ref.rpartition("/")
        key = f"{ns or 'default'}/{name}"
        return next((p for p in self.pods if p.key == key), None)


def load_world(
    paths: Iterable[str | Path],
    cluster_cidr: str = DEFAULT_CLUSTER_CIDR,
    node_prefix: int = DEFAULT_NODE_PREFIX,
    strict_addresses: bool = False,
) -> World:
    """Raises InvalidInput listing every problem in the manifests."""
    m = load(paths)
    alloc = allocate(m.nodes, m.pods, cluster_cidr, node_prefix, strict=strict_addresses)
    problems = m.problems + alloc.problems
    if problems:
        raise InvalidInput(problems)
    return World(m.namespaces, alloc.pods, m.policies, alloc.nodes, m.cluster_policies, m.nodes)
