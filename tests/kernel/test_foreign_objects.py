"""What someone else writes into policyd's own nftables objects never wedges the agent: a
verdict-map entry whose verdict is not a jump (`accept`, `drop`, `goto`) — on a pod's own
key, which opens the pod, or on a key of no pod — is drift, found by the one-second check,
repaired by the next sync and by a new agent's first sync, and later policy changes keep
reaching the kernel (issue 42, N1); so is a base chain made again with another policy,
priority or type (N3)."""

from __future__ import annotations

import pytest

from harness.node_agent import NodeAgent
from harness.tampering import nft, nft_list
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


@pytest.mark.parametrize("cluster", NFT_VARIANTS, indirect=True)
@pytest.mark.parametrize("change", ["policy drop", "priority 10", "type and priority"])
def test_a_base_chain_remade_with_another_policy_or_priority_is_made_again(cluster, change):
    """N3: `nft add chain inet policyd forward-hook { …; policy drop; }` (every forwarded
    packet dropped) or the chain deleted and made again at another priority: the check names
    it (hook-changed), the sync makes the chain again as it should be."""
    cluster.apply(ALLOW_FRONTEND)
    netns = cluster.agent.netns
    base = {"family": "inet", "table": "policyd", "name": "forward-hook", "type": "filter", "hook": "forward", "prio": 0,
            "policy": "accept"}
    if change == "policy drop":
        nft(netns, {"add": {"chain": {**base, "policy": "drop"}}})
        assert not cluster.can("f1", "b1"), "every forwarded packet is dropped (else this test shows nothing)"
    else:
        ref = {"family": "inet", "table": "policyd", "name": "forward-hook"}
        other = {**base, "prio": 10} if change == "priority 10" else {**base, "type": "filter", "prio": -5}
        nft(netns, {"flush": {"chain": ref}}, {"delete": {"chain": ref}}, {"add": {"chain": other}})
        assert cluster.can("u1", "b1"), "the forward hook lost its rules (else this test shows nothing)"
    found = cluster.agent.check()
    assert "hook-changed" in {d.kind for d in found}, found
    result = cluster.sync(full=True)
    assert "hook-changed" in {d.kind for d in result.drift}, result.drift
    assert cluster.agent.check() == [] and cluster.sync(full=True).ops == 0
    assert not cluster.can("u1", "b1") and cluster.can("f1", "b1")
    listed = [i["chain"] for i in nft_list(netns, "chain", "inet", "policyd", "forward-hook") if "chain" in i][0]
    assert (listed["prio"], listed["policy"]) == (0, "accept")


@pytest.mark.parametrize("cluster", ["routed-iptables", "bridge-iptables"], indirect=True)
def test_a_rule_above_the_iptables_jump_is_moved_below_it(cluster):
    """N2: `iptables -I FORWARD 1 -s ADDR -j ACCEPT` above policyd's jump bypasses every
    policy for ADDR: the check names it (jump-not-first), the sync puts policyd's jump first
    again (the other rule stays, below it), in both families, also for a new agent."""
    from policyd.lab.netns import sh

    cluster.apply(ALLOW_FRONTEND)
    netns = cluster.agent.netns
    for tool, addr in (("iptables-legacy", cluster.ip("u1")), ("ip6tables-legacy", cluster.ip("u1", 6))):
        sh(tool, "-I", "FORWARD", "1", "-s", addr, "-j", "ACCEPT", ns=netns)
    assert cluster.can("u1", "b1") and cluster.can("u1", "b1", family=6), "the rule above the jump opens b1 to u1"
    found = cluster.agent.check()
    assert {str(d) for d in found} >= {"jump-not-first POLICYD-FORWARD (IPv4)", "jump-not-first POLICYD-FORWARD (IPv6)"}, found
    cluster.sync(full=True)
    assert not cluster.can("u1", "b1") and not cluster.can("u1", "b1", family=6) and cluster.can("f1", "b1")
    for tool in ("iptables-legacy", "ip6tables-legacy"):
        rules = [line for line in sh(tool + "-save", "-t", "filter", ns=netns).stdout.splitlines() if line.startswith("-A FORWARD ")]
        assert rules[0] == "-A FORWARD -j POLICYD-FORWARD" and len(rules) == 2, rules
    assert cluster.agent.check() == [] and cluster.sync(full=True).ops == 0
    # the same found by a new agent's first sync
    sh("iptables-legacy", "-I", "FORWARD", "1", "-s", cluster.ip("u1"), "-j", "ACCEPT", ns=netns)
    old = cluster.agent
    cluster.agent = NodeAgent(old.netns, "node-1", old.syncer.cfg.mode, backend=old.kind)
    cluster.agent.load(cluster.namespaces, cluster.pods.values(), cluster.policies.values())
    assert cluster.sync().ops > 0 and not cluster.can("u1", "b1")
