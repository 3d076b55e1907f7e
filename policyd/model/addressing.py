"""The deterministic address allocator shared by `policyd matrix` and `policyd lab`.

* Nodes: Node objects and every `spec.nodeName`, sorted by name; with none, `node-1`
  and `node-2`. Pods without a node are spread round-robin, in `namespace/name` order.
* Node i (0-based, in name order) gets the i-th `/node_prefix` of the cluster CIDR
  (default 10.244.0.0/16 → 10.244.0.0/24, 10.244.1.0/24, …) unless its Node object sets
  `spec.podCIDRs`.
* Pods without `status.podIPs` get the lowest free host address of their node's CIDR from
  `.2` up (`.1` stays free for a gateway), in `namespace/name` order.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, replace

from .objects import IPAddress, IPNetwork, Node, Pod
from .problems import InvalidInput, Problem

DEFAULT_CLUSTER_CIDR = "10.244.0.0/16"
DEFAULT_NODE_PREFIX = 24
DEFAULT_NODES = ("node-1", "node-2")


@dataclass(frozen=True)
class Allocation:
    nodes: dict[str, IPNetwork]
    pods: list[Pod]
    problems: list[Problem]


def check_addressing(cluster_cidr: str, node_prefix: int) -> None:
    """--cluster-cidr and --node-prefix: a network, and a longer prefix within its family
    (ValueError saying which option is wrong and why)."""
    try:
        net = ipaddress.ip_network(cluster_cidr)
    except ValueError as e:
        raise ValueError(f"--cluster-cidr {cluster_cidr!r}: {e} (a network such as 10.244.0.0/16)") from None
    if not net.prefixlen <= node_prefix <= net.max_prefixlen:
        raise ValueError(f"--node-prefix {node_prefix}: each node's pod CIDR is carved from --cluster-cidr {net}, so its prefix "
                         f"length is {net.prefixlen}-{net.max_prefixlen}")


def node_cidrs(nodes: list[Node], pods: list[Pod], cluster_cidr: str, node_prefix: int, default_nodes: tuple[str, ...]) -> dict[str, IPNetwork]:
    names = sorted({n.name for n in nodes} | {p.node for p in pods if p.node})
    if not names:
        names = list(default_nodes)
    explicit = {n.name: n.pod_cidrs[0] for n in nodes if n.pod_cidrs}
    cluster = ipaddress.ip_network(cluster_cidr)
    subnets: Iterator[IPNetwork] = cluster.subnets(new_prefix=node_prefix)
    out: dict[str, IPNetwork] = {}
    for name in names:
        got = explicit.get(name) or next(subnets, None)
        if got is None:
            without = sum(1 for n in names if n not in explicit)
            room = 2 ** (node_prefix - cluster.prefixlen)
            raise InvalidInput([Problem("<allocator>", None, "spec.podCIDR",
                                        f"{without} nodes without a podCIDR need {without} /{node_prefix} ranges of --cluster-cidr "
                                        f"{cluster}, which has {room}: give the Nodes spec.podCIDR, a larger --cluster-cidr, or a "
                                        "longer --node-prefix", "Node", name)])
        out[name] = got
    return out


def _hosts_from_2(net: IPNetwork) -> Iterator[IPAddress]:
    gateway = net.network_address + 1
    return (h for h in net.hosts() if h != gateway)


def first_free(net: IPNetwork, used: set[IPAddress]) -> IPAddress | None:
    """The lowest address of a node's pod CIDR not in `used`, from .2 (.1 is the node's
    gateway): the address `allocate` would give the next pod."""
    return next((h for h in _hosts_from_2(net) if h not in used), None)


def allocate(
    nodes: list[Node],
    pods: list[Pod],
    cluster_cidr: str = DEFAULT_CLUSTER_CIDR,
    node_prefix: int = DEFAULT_NODE_PREFIX,
    default_nodes: tuple[str, ...] = DEFAULT_NODES,
    strict: bool = False,
) -> Allocation:
    """Give every pod a node and (unless host-network) an address.

    `strict` (the lab) requires explicit addresses to lie in their node's pod CIDR, since
    the lab must route them."""
    cidrs = node_cidrs(nodes, pods, cluster_cidr, node_prefix, default_nodes)
    names = sorted(cidrs)
    problems: list[Problem] = []
    ordered = sorted(pods, key=lambda p: p.key)
    placed: list[Pod] = []
    spread = 0
    for pod in ordered:
        if not pod.node:
            pod = replace(pod, node=names[spread % len(names)])
            spread += 1
        placed.append(pod)
    used = {ip for p in placed for ip in p.ips}
    out: list[Pod] = []
    free = {name: _hosts_from_2(net) for name, net in cidrs.items()}
    for pod in placed:
        net = cidrs.get(pod.node)  # type: ignore[arg-type]
        if pod.ips:
            if strict and net is not None and not any(ip in net for ip in pod.ips):
                problems.append(
                    Problem("<lab>", None, "status.podIPs", f"{', '.join(map(str, pod.ips))} is outside node {pod.node}'s pod CIDR {net}", "Pod", pod.key)
                )
        elif not pod.host_network and net is not None:
            ip = next((h for h in free[pod.node] if h not in used), None)  # type: ignore[index]
            if ip is None:
                problems.append(Problem("<allocator>", None, "status.podIPs",
                                        f"node {pod.node}'s pod CIDR {net} has no free address left for it: give pods "
                                        "status.podIPs, more nodes, or a shorter --node-prefix", "Pod", pod.key))
            else:
                used.add(ip)
                pod = replace(pod, ips=(ip,))
        out.append(pod)
    return Allocation(cidrs, out, problems)
