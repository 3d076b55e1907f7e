"""Which open connections a sweep ends (reconcile/revoke.judge), against expectations
written from the policy by hand: backend admits frontend only, on any port."""

from __future__ import annotations

import socket

from policyd.compile.evaluate import Evaluator
from policyd.observe.conntrack import Connection, Tracked
from policyd.reconcile.revoke import judge
from policyd.whatif.world import load_world

MARK = 0x02000000
WORLD = """
apiVersion: v1
kind: Pod
metadata: {name: f1, namespace: default, labels: {app: frontend}}
spec: {nodeName: node-1, containers: [{name: c}]}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b1, namespace: default, labels: {app: backend}}
spec: {nodeName: node-1, containers: [{name: c}]}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: u1, namespace: default, labels: {app: unallowed}}
spec: {nodeName: node-1, containers: [{name: c}]}
status: {podIP: 10.0.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: u2, namespace: default, labels: {app: unallowed}}
spec: {nodeName: node-2, containers: [{name: c}]}
status: {podIP: 10.0.1.3}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-frontend, namespace: default}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress: [{from: [{podSelector: {matchLabels: {app: frontend}}}]}]
"""


def entry(src: str, dst: str, protocol: str = "TCP", port: int | None = 80, mark: int = 0, closed: bool = False) -> Tracked:
    return Tracked(Connection(src, dst, protocol, port), socket.AF_INET, b"", b"", mark, closed)


def test_refused_connections_are_marked_admitted_ones_never(tmp_path):
    (tmp_path / "w.yaml").write_text(WORLD)
    w = load_world([tmp_path / "w.yaml"])
    compiler = w.compile("node-1")
    local = {str(ip): p for p in w.pods if p.node == "node-1" for ip in p.ips}
    entries = [
        entry("10.0.0.1", "10.0.0.2"),                     # frontend → backend: admitted
        entry("10.0.0.3", "10.0.0.2"),                     # unallowed (local) → backend: refused at b1's ingress
        entry("10.0.1.3", "10.0.0.2", "UDP", 53),          # unallowed (remote) → backend: refused
        entry("10.0.0.3", "10.0.0.2", "ICMP", None),       # ping: refused too
        entry("10.0.0.2", "10.0.0.3"),                     # backend → unallowed: backend's egress is not isolated
        entry("192.168.0.1", "10.0.0.2"),                  # the node itself → backend: never filtered
        entry("10.0.1.3", "10.0.1.9"),                     # no local pod: not this node's business
        entry("10.0.0.3", "10.0.0.2", mark=MARK),          # refused and marked already: nothing to do
        entry("10.0.0.1", "10.0.0.2", mark=MARK | 0x1),    # marked, admitted again: released
        entry("10.0.0.3", "10.0.0.2", "TCP", 8080, closed=True),  # refused, but a TCP connection that has ended: left alone
    ]
    got = judge(entries, Evaluator(compiler, learned=lambda spec, ip: True), local, {"192.168.0.1"}, MARK)
    assert [e.connection for e in (c.entry for c in got.cut)] == [entries[1].connection, entries[2].connection, entries[3].connection]
    assert {(c.side.direction.value, str(c.side.endpoint)) for c in got.cut} == {("ingress", "default/b1")}
    assert got.readmitted == [entries[8]]


def test_a_commit_names_the_addresses_whose_connections_it_may_have_revoked():
    """Peers taken out of sets and pods whose own chains changed; anything else: all."""
    from policyd.dataplane.objects import AddrPort, ChainDef, Hook, Prefix, SetDef, SetKind
    from policyd.dataplane.ops import EditChain, FillChain, SetElements
    from policyd.reconcile.revoke import suspects

    s = SetDef("sel", SetKind.ADDR, 4, "", frozenset())
    pod_chain, base = ChainDef.build("pod-in-b1", []), ChainDef.build("forward-hook", [], hook=Hook("forward"))
    owners = {"pod-in-b1": ["10.0.0.2", "fd00::2"]}
    ops = [SetElements(s, frozenset({"10.0.0.9"}), frozenset({"10.0.0.3", AddrPort("10.0.0.4", "tcp", 80)})),
           EditChain(pod_chain, ("a",), ())]
    assert suspects(ops, owners) == {"10.0.0.3", "10.0.0.4", "10.0.0.2", "fd00::2"}
    assert suspects([SetElements(s, frozenset({"10.0.0.9"}), frozenset())], owners) == set(), "an addition revokes nothing"
    assert suspects([SetElements(s, frozenset(), frozenset({Prefix("10.1.0.0", 16)}))], owners) is None
    assert suspects([SetElements(s, frozenset(), frozenset(), flush=True)], owners) is None
    assert suspects([FillChain(base, flush=True)], owners) is None
