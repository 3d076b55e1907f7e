"""Revoked access ends open connections (reconcile/revoke.py): real TCP streams and UDP
flows opened while allowed, over IPv4 and IPv6, then a policy that no longer admits some of
them. The base chains accept established traffic first, so before the sweep the revoked
streams still flow (the test shows it); after it, no packet of theirs passes either way
(the server's retransmissions included, which would revive a deleted entry), while the
admitted ones flow on, also through many unrelated changes; allowed again, they resume."""

from __future__ import annotations

import time

import pytest

from policyd.dataplane.config import DEFAULT_REVOKE_MARK
from policyd.reconcile.revoke import Judgement
from tests.helpers import Flow, echo_servers
from tests.kernel.conftest import ALLOW_FRONTEND, KernelCluster, kernel_cluster

OPS_ONLY = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ops-only, namespace: other}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: ops}}}]}]
"""


def open_flows(c: KernelCluster, src: str, family: int) -> list[Flow]:
    return [Flow(c.topo.pod(c.pods[src].key).netns, c.ip("b1", family), proto) for proto in ("TCP", "UDP")]



@pytest.mark.parametrize("variant", ["routed-nftables", "bridge-iptables"])  # each backend and each topology once
def test_revoked_connections_end_and_admitted_ones_flow_on(variant: str):
    with kernel_cluster(variant, revoke_mark=DEFAULT_REVOKE_MARK) as c:
        b1 = c.topo.pod(c.pods["b1"].key).netns
        with echo_servers(b1, 4), echo_servers(b1, 6):
            revoked = [f for fam in (4, 6) for f in open_flows(c, "u1", fam)]
            admitted = [f for fam in (4, 6) for f in open_flows(c, "f1", fam)]
            c.apply(ALLOW_FRONTEND)  # backend now admits frontend only
            assert all(f.echoes() for f in revoked), "established traffic passes until its entry goes (else this test proves nothing)"
            cuts = c.agent.cut_revoked().cut
            assert len(cuts) == 4, [str(x.entry.connection) for x in cuts]
            assert {(x.side.direction.value, str(x.side.endpoint)) for x in cuts} == {("ingress", "default/b1")}
            time.sleep(1.5)  # let the servers retransmit (a deleted entry would be revived by that); echoes() then decides
            assert not [f.name for f in revoked if f.echoes(0.5)], "a revoked connection still flows"
            assert all(f.echoes() for f in admitted), [f.name for f in admitted if not f.echoes()]
            assert c.agent.cut_revoked(every=True) == Judgement([], []), "a second sweep finds nothing more"
            assert not c.can("u1", "b1") and c.can("f1", "b1")

            # Unrelated changes (a policy in another namespace, on and off): every sweep spares the admitted.
            rounds = 1000 if variant == "routed-nftables" else 50
            for i in range(rounds):
                c.apply(ALLOW_FRONTEND, OPS_ONLY) if i % 2 == 0 else c.apply(ALLOW_FRONTEND)
                assert c.agent.cut_revoked(every=True) == Judgement([], []), "every connection judged: none refused"
            assert all(f.echoes() for f in admitted), [f.name for f in admitted if not f.echoes()]
            assert c.agent.cutter is not None and sum(c.agent.cutter.cut.values()) == 4

            # Admitted again: the marked entries go, and the UDP flows (whose sockets kept their
            # place) answer again; the TCP streams resume once their retransmission gets through.
            c.apply()
            assert len(c.agent.cut_revoked().readmitted) == 4
            assert all(f.echoes() for f in revoked if f.name.startswith("UDP")), [f.name for f in revoked if not f.echoes()]
            for f in revoked + admitted:
                f.sock.close()
