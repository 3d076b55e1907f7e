"""The nftables ruleset generation on the real kernel: it moves by one per commit that
changes something (ours or anyone's) and never for a listing, so a full resync and the drift
check on a quiet node list nothing, and an element swapped by someone else (same count) is
found by the next check and repaired."""

from __future__ import annotations

import json
import subprocess

import pytest

from harness.tampering import names
from policyd.lab.netns import entered
from policyd.nft.generation import Generation
from tests.helpers import EXAMPLE_POLICY

POLICY = EXAMPLE_POLICY.read_text()


@pytest.mark.parametrize("cluster", ["routed-nftables", "bridge-nftables"], indirect=True)
def test_generation_proves_quiet_and_catches_a_swapped_element(cluster):
    agent = cluster.agent
    netns = agent.netns
    with entered(netns):
        gen = Generation()
    try:
        cluster.apply(POLICY)
        before = gen.read()
        agent.dump()  # a listing
        assert gen.read() == before, "a listing moves nothing"
        r = cluster.sync(full=True)
        assert r.full and r.ops == 0 and not r.listed, "a quiet node's full resync lists nothing"
        assert agent.syncer.verified == before and agent.check() == []

        # Someone else swaps one element of the peer set that lets frontend in: same count.
        _, peers = names(netns, "nftables")
        doc = json.loads(subprocess.run(["ip", "netns", "exec", netns, "nft", "-j", "list", "set", "inet", "policyd", peers],
                                        capture_output=True, text=True, check=True).stdout)
        elems = next(i["set"]["elem"] for i in doc["nftables"] if "set" in i)
        victim = cluster.ip("f1") if cluster.ip("f1") in elems else elems[0]
        batch = (f"delete element inet policyd {peers} {{ {victim} }}\n"
                 f"add element inet policyd {peers} {{ 10.244.9.9 }}\n")
        subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=batch, text=True, check=True)
        assert gen.read() == before + 1, "one foreign commit, one step"
        assert not cluster.can("f1", "b1"), "the swap took frontend's access (else this test proves nothing)"
        assert [str(d) for d in agent.check()] == [f"set-elements {peers}"]
        r = cluster.sync(full=True)
        assert r.listed and r.ops > 0 and cluster.can("f1", "b1")
        assert agent.syncer.verified == gen.read(), "our repair was the only commit since the listing"
        assert agent.check() == [] and not cluster.sync(full=True).listed
    finally:
        gen.close()
