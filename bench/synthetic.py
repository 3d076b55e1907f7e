"""A deterministic synthetic cluster: pods in namespaces on nodes, and policies mixing
pod and namespace selectors, ipBlocks with except and named ports."""

from __future__ import annotations

import ipaddress
import random

from policyd.model.objects import (
    Action,
    ClusterNetworkPolicy,
    CNPPeer,
    CNPPort,
    CNPRule,
    ContainerPort,
    Direction,
    IPBlock,
    Namespace,
    NetworkPolicy,
    Peer,
    Pod,
    PolicyPort,
    PolicyRule,
    Tier,
)
from policyd.model.selectors import LabelSelector

APPS = [f"app{i}" for i in range(20)]
TEAMS = ["a", "b", "c", "d", "e"]


def namespaces(n: int) -> list[Namespace]:
    return [Namespace(f"ns{i}", {"team": TEAMS[i % len(TEAMS)], "kubernetes.io/metadata.name": f"ns{i}"}) for i in range(n)]


def pod(i: int, n_ns: int, n_nodes: int, app: str | None = None) -> Pod:
    node = i % n_nodes
    ip = ipaddress.ip_address(f"10.{(node >> 8) + 64}.{node & 255}.0") + 2 + i // n_nodes
    labels = {"app": app or APPS[(i + i // n_nodes) % len(APPS)], "tier": "web" if (i // n_nodes) % 3 else "db"}
    return Pod(
        f"ns{(i + i // n_nodes) % n_ns}", f"pod{i}", labels, f"node-{node}", (ip,),
        (ContainerPort(8080 if i % 2 else 80, "TCP", "http"), ContainerPort(53, "UDP", "dns")),
    )


def policies(n: int, n_ns: int, seed: int = 1) -> list[NetworkPolicy]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        ns = f"ns{i % n_ns}"
        sel = LabelSelector.build({"app": rnd.choice(APPS)}, None)
        kind = i % 4
        if kind == 0:
            peer = Peer(LabelSelector.build({"app": rnd.choice(APPS)}, None))
        elif kind == 1:
            peer = Peer(LabelSelector.build({"tier": "web"}, None), LabelSelector.build({"team": rnd.choice(TEAMS)}, None))
        elif kind == 2:
            third = rnd.randrange(256)
            peer = Peer(ip_block=IPBlock(ipaddress.ip_network(f"172.{16 + third % 16}.0.0/16"), (ipaddress.ip_network(f"172.{16 + third % 16}.{third}.0/24"),)))
        else:
            peer = Peer(LabelSelector.build({"app": rnd.choice(APPS)}, None), LabelSelector())
        port = PolicyPort("TCP", "http" if i % 5 == 0 else 80 + i % 10)
        types = frozenset({Direction.INGRESS, Direction.EGRESS}) if i % 7 == 0 else frozenset({Direction.INGRESS})
        egress = (PolicyRule((peer,), (port,)),) if Direction.EGRESS in types else ()
        out.append(NetworkPolicy(ns, f"pol{i}", sel, (PolicyRule((peer,), (port,)),), egress, types))
    return out


def cluster_policies(n: int, seed: int = 2) -> list[ClusterNetworkPolicy]:
    """n ClusterNetworkPolicies over the synthetic namespaces (subjects select by `team`, so a
    namespace without that label, like the first-packet bench's, is never a subject): both
    tiers, all three actions, pod/namespace/network peers, ports and ranges."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        team = LabelSelector.build({"team": rnd.choice(TEAMS)}, None)
        pods = LabelSelector.build({"app": rnd.choice(APPS)}, None) if i % 2 else LabelSelector()
        kind = i % 3
        if kind == 0:
            peer = CNPPeer(namespace_selector=LabelSelector.build({"team": rnd.choice(TEAMS)}, None))
        elif kind == 1:
            peer = CNPPeer(namespace_selector=LabelSelector(), pod_selector=LabelSelector.build({"app": rnd.choice(APPS)}, None))
        else:
            peer = CNPPeer(networks=(ipaddress.ip_network(f"172.{16 + i % 16}.{rnd.randrange(256)}.0/24"),))
        action = (Action.ACCEPT, Action.DENY, Action.PASS)[i % 3 if i % 5 else 1]
        port = CNPPort("TCP", 80 + i % 10) if i % 4 else CNPPort("UDP", 5000, 5100)
        rule = CNPRule(action, (peer,), (port,), f"rule{i}")
        ingress = (rule,) if kind != 2 else ()
        out.append(ClusterNetworkPolicy(f"cnp{i}", Tier.BASELINE if i % 4 == 3 else Tier.ADMIN, i % 1001, team, pods,
                                        ingress, (rule,)))
    return out
