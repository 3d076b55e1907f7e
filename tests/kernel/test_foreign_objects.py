"""What someone else writes into policyd's own nftables objects never wedges the agent: a
verdict-map entry whose verdict is not a jump (`accept`, `drop`, `goto`) — on a pod's own
key, which opens the pod, or on a key of no pod — is drift, found by the one-second check,
repaired by the next sync and by a new agent's first sync, and later policy changes keep
reaching the kernel (issue 42, N1)."""

from __future__ import annotations

import pytest

from policyd.lab.agent import NodeAgent
from tests.e2e.tampering import nft, nft_list
from tests.kernel.conftest import ALLOW_FRONTEND, KernelCluster

NFT_VARIANTS = ["routed-nftables", "bridge-nftables"]


def dispatch_maps(cluster: KernelCluster) -> dict[str, dict]:
    return {i["map"]["name"]: i["map"] for i in nft_list(cluster.agent.netns, "table", "inet", "policyd") if "map" in i}


def ingress_entry(cluster: KernelCluster, pod: str) -> tuple[str, str, str]:
    """(the ingress dispatch map, pod's key in it, the chain it jumps to), as listed."""
    for name, m in dispatch_maps(cluster).items():
        for key, verdict in m.get("elem", []) if name.startswith("pod-ingress-") else []:
            target = verdict.get("jump", {}).get("target", "")
            if target.endswith(f"/{pod}"):
                return name, key, target
    raise AssertionError(f"no ingress entry for {pod}")


def entry(name: str, key: str, verdict: dict) -> dict:
    return {"element": {"family": "inet", "table": "policyd", "name": name, "elem": [[key, verdict]]}}


def replace_entry(cluster: KernelCluster, pod: str, verdict: dict) -> None:
    name, key, target = ingress_entry(cluster, pod)
    nft(cluster.agent.netns, {"delete": entry(name, key, {"jump": {"target": target}})}, {"add": entry(name, key, verdict)})


def repaired(cluster: KernelCluster) -> None:
    """The one-second check names the drift, the sync it triggers repairs it."""
    found = cluster.agent.check()
    assert "map-elements" in {d.kind for d in found}, found
    result = cluster.sync(full=True)
    assert "map-elements" in {d.kind for d in result.drift}, result.drift
    assert cluster.agent.check() == [] and cluster.sync(full=True).ops == 0


@pytest.mark.parametrize("cluster", NFT_VARIANTS, indirect=True)
@pytest.mark.parametrize("verdict", ["accept", "drop", "goto"])
def test_a_pods_dispatch_entry_given_another_verdict_is_repaired(cluster, verdict):
    cluster.apply(ALLOW_FRONTEND)
    assert not cluster.can("u1", "b1") and cluster.can("f1", "b1")
    _, _, chain = ingress_entry(cluster, "b1")
    replace_entry(cluster, "b1", {"goto": {"target": chain}} if verdict == "goto" else {verdict: None})
    if verdict == "accept":
        assert cluster.can("u1", "b1"), "the tamper opens the pod (else this test shows nothing)"
    if verdict == "drop":
        assert not cluster.can("f1", "b1"), "the tamper closes the pod"
    repaired(cluster)
    assert not cluster.can("u1", "b1") and cluster.can("f1", "b1")


@pytest.mark.parametrize("cluster", NFT_VARIANTS, indirect=True)
def test_a_new_agent_adopts_a_table_with_a_foreign_entry(cluster):
    """`lab restart-agent` failed the same way: a new agent's first sync reads the table; it
    repairs it instead of raising."""
    cluster.apply(ALLOW_FRONTEND)
    replace_entry(cluster, "b1", {"accept": None})
    assert cluster.can("u1", "b1")
    old = cluster.agent
    cluster.agent = NodeAgent(old.netns, "node-1", old.syncer.cfg.mode, backend=old.kind)
    cluster.agent.load(cluster.namespaces, cluster.pods.values(), cluster.policies.values())
    first = cluster.sync()
    assert first.full and first.ops > 0
    assert not cluster.can("u1", "b1") and cluster.can("f1", "b1")
    assert cluster.sync(full=True).ops == 0


@pytest.mark.parametrize("cluster", NFT_VARIANTS, indirect=True)
def test_a_harmless_foreign_entry_does_not_freeze_enforcement(cluster):
    """An entry on a key no pod has (`"foo0" : accept`, or an address no pod has): repaired,
    and a policy applied afterwards reaches the kernel."""
    name = next(n for n in sorted(dispatch_maps(cluster)) if n.startswith("pod-egress-") and not n.endswith("-v6"))
    nft(cluster.agent.netns, {"add": entry(name, "foo0" if name.endswith("-if") else "10.99.0.1", {"accept": None})})
    repaired(cluster)
    assert cluster.can("u1", "b1")
    cluster.apply(ALLOW_FRONTEND)
    assert not cluster.can("u1", "b1") and cluster.can("f1", "b1")
