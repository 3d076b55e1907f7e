"""Fail-open vs fail-closed for a pod interface the agent has not programmed yet (a pod the
CNI just wired, which the agent has not seen in the API): real packets, routed topology."""

from __future__ import annotations

import ipaddress
import uuid

import pytest

from harness.node_agent import NodeAgent
from policyd.dataplane.config import DispatchMode, RenderConfig
from policyd.lab.topology import Topology
from policyd.model.objects import Namespace, Pod


def make_pod(name: str, last: int) -> Pod:
    return Pod("default", name, {"app": name}, "node-1", (ipaddress.ip_address(f"10.244.0.{last}"),))


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
@pytest.mark.parametrize("closed", [False, True], ids=["open", "closed"])
def test_unprogrammed_pod_interface(closed: bool, backend: str):
    topo = Topology(f"pdf{uuid.uuid4().hex[:6]}", "routed")
    try:
        topo.add_node("node-1", ipaddress.ip_network("10.244.0.0/24"))
        known, fresh, peer = make_pod("known", 10), make_pod("fresh", 11), make_pod("peer", 12)
        for p in (known, fresh, peer):
            topo.add_pod(p, [80], [])
        topo.wait_ready()
        cfg = RenderConfig(mode=DispatchMode.INTERFACE, closed_prefixes=("cali",) if closed else ())
        agent = NodeAgent(topo.nodes["node-1"].netns, "node-1", DispatchMode.INTERFACE, cfg=cfg, backend=backend)
        agent.load([Namespace("default", {"kubernetes.io/metadata.name": "default"})], [known, peer], [])
        agent.sync()
        # `fresh` is wired but unknown to the agent: open lets it talk, closed drops it both ways.
        assert topo.probe("default/fresh", "10.244.0.10", "TCP", 80, timeout=0.4) is (not closed)
        assert topo.probe("default/known", "10.244.0.11", "ICMP", None, timeout=0.4) is (not closed)
        # Traffic between programmed pods is unaffected; once the agent knows `fresh`, it flows.
        assert topo.probe("default/peer", "10.244.0.10", "TCP", 80, timeout=0.4)
        agent.compiler.upsert_pod(fresh)
        agent.sync()
        assert topo.probe("default/fresh", "10.244.0.10", "TCP", 80, timeout=0.4)
        assert topo.probe("default/known", "10.244.0.11", "ICMP", None, timeout=0.4)
    finally:
        topo.teardown()
