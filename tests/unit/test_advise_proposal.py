"""`policyd advise`, the pure part: what a proposal says for hand-written flows, and the
engine's proof of it. Expectations are written out by hand, not read from the engine."""

from __future__ import annotations

import ipaddress
import json
import struct

import pytest

from policyd.advise.propose import propose
from policyd.advise.prove import prove
from policyd.model.objects import ContainerPort, Namespace, Pod
from policyd.observe.conntrack import parse
from policyd.observe.flows import FlowRecord, FlowTable, document, merge
from policyd.whatif.world import World
from tests.helpers import ROOT

A = ipaddress.ip_address


def pod(ns: str, name: str, ip: str, labels: dict[str, str], ports: tuple[ContainerPort, ...] = ()) -> Pod:
    return Pod(ns, name, labels, "node-1", (A(ip),), ports)


WEB = ContainerPort(8080, "TCP", "http")
PODS = [
    pod("shop", "web-7d9f8-abcde", "10.244.0.2", {"app": "web", "pod-template-hash": "7d9f8"}, (WEB,)),
    pod("shop", "web-7d9f8-fghij", "10.244.0.3", {"app": "web", "pod-template-hash": "7d9f8"}, (WEB,)),
    pod("shop", "db-0", "10.244.0.4", {"app": "db", "statefulset.kubernetes.io/pod-name": "db-0"}, (ContainerPort(5432),)),
    pod("shop", "idle-1", "10.244.0.5", {"app": "idle"}),
    pod("edge", "ingress-1", "10.244.0.6", {"app": "ingress"}),
]
NAMESPACES = [Namespace("shop", {"kubernetes.io/metadata.name": "shop"}), Namespace("edge", {"kubernetes.io/metadata.name": "edge"})]


def flow(src: str, dst: str, protocol: str = "TCP", port: int | None = 8080) -> FlowRecord:
    return FlowRecord(src, dst, protocol, port, 1.0, 2.0, 1)


FLOWS = [
    flow("edge/ingress-1", "shop/web-7d9f8-abcde"),
    flow("shop/web-7d9f8-abcde", "shop/db-0", port=5432),
    flow("shop/web-7d9f8-fghij", "203.0.113.9", port=443),
    flow("198.51.100.7", "shop/web-7d9f8-fghij"),
    flow("shop/idle-1", "shop/db-0", "ICMP", None),
]


def by_name(policies: list[dict], name: str) -> dict:
    return next(p for p in policies if p["metadata"]["name"] == name)


def test_a_workload_is_selected_by_its_stable_labels_and_peers_by_theirs():
    p = propose(FLOWS, PODS, ["shop"], dns=False)
    assert sorted(x["metadata"]["name"] for x in p.policies) == ["advise-db", "advise-idle", "advise-web"]
    web = by_name(p.policies, "advise-web")["spec"]
    assert web["podSelector"] == {"matchLabels": {"app": "web"}}  # without pod-template-hash
    assert web["policyTypes"] == ["Ingress", "Egress"]
    assert sorted(web["ingress"], key=repr) == sorted([
        {"from": [{"ipBlock": {"cidr": "198.51.100.7/32"}}], "ports": [{"protocol": "TCP", "port": "http"}]},
        {"from": [{"podSelector": {"matchLabels": {"app": "ingress"}},
                   "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "edge"}}}],
         "ports": [{"protocol": "TCP", "port": "http"}]},
    ], key=repr)
    assert sorted(web["egress"], key=repr) == sorted([
        {"to": [{"ipBlock": {"cidr": "203.0.113.9/32"}}], "ports": [{"protocol": "TCP", "port": 443}]},
        {"to": [{"podSelector": {"matchLabels": {"app": "db"}}}], "ports": [{"protocol": "TCP", "port": 5432}]},  # no name declared
    ], key=repr)
    db = by_name(p.policies, "advise-db")["spec"]
    assert db["podSelector"] == {"matchLabels": {"app": "db"}}
    assert db["ingress"] == [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"protocol": "TCP", "port": 5432}]}]
    assert db["egress"] == []
    assert any("1 ICMP flow(s)" in n and "advise-idle" in n for n in p.notes)
    text = repr(p.policies)
    assert "web-7d9f8-abcde" not in text and "10.244.0." not in text, "never a pod name or a pod address"


def test_dns_default_deny_and_audit():
    p = propose(FLOWS, PODS, ["shop"], dns=True, default_deny=True, audit=True)
    web = by_name(p.policies, "advise-web")
    assert {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]} in web["spec"]["egress"]
    deny = by_name(p.policies, "advise-default-deny")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    assert all(x["metadata"]["annotations"] == {"policyd.io/audit": "true"} for x in p.policies)


def test_pods_without_labels_are_reported_not_selected_with_their_namespace():
    pods = [*PODS, pod("shop", "bare", "10.244.0.9", {})]
    p = propose(FLOWS, pods, ["shop"])
    assert not any(x["spec"]["podSelector"] == {} for x in p.policies)
    assert any("pods without labels (bare)" in n for n in p.notes)


def test_the_proof_keeps_every_observed_flow_and_finds_what_else_is_admitted():
    world = World(NAMESPACES, PODS, [], {})
    p = propose(FLOWS, PODS, ["shop"], dns=False, audit=True)  # proven as enforced
    proof = prove(world, FLOWS, p.policies, {"shop"})
    assert proof.holds and proof.checked == 4  # the ICMP flow is not judged
    # Each workload's rules name exactly the peers seen: nothing else is admitted between workloads.
    assert proof.beyond == []
    # A flow the proposal never saw is denied by it: the proof reports it.
    extra = [*FLOWS, flow("shop/idle-1", "shop/db-0", port=5432)]
    late = prove(world, extra, p.policies, {"shop"})
    assert [(f.src, f.dst, f.port) for f in late.denied] == [("shop/idle-1", "shop/db-0", 5432)]


def test_over_breadth_names_a_workload_pair_never_seen():
    # Two workloads share the selector's labels: the policy for `app: web` also picks the
    # canary, so ingress → canary on 8080 is admitted though never seen.
    pods = [*PODS, pod("shop", "web-canary", "10.244.0.10", {"app": "web", "track": "canary"}, (WEB,))]
    world = World(NAMESPACES, pods, [], {})
    p = propose(FLOWS, pods, ["shop"], dns=False)
    proof = prove(world, FLOWS, p.policies, {"shop"})
    assert proof.holds
    assert ("edge/app=ingress", "shop/app=web,track=canary", "TCP/8080") in proof.beyond


def _nla(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _tuple(src: str, dst: str, sport: int, dport: int) -> bytes:
    ip = _nla(1, A(src).packed) + _nla(2, A(dst).packed)
    proto = _nla(1, bytes([6])) + _nla(2, struct.pack("!H", sport)) + _nla(3, struct.pack("!H", dport))
    return _nla(1 | 0x8000, ip) + _nla(2 | 0x8000, proto)


def test_conntrack_events_name_the_pod_that_answers_after_dnat():
    """A connection to a Service address: the reply tuple's source is the backend pod."""
    attrs = _nla(1 | 0x8000, _tuple("10.244.0.2", "10.96.0.10", 40000, 53)) + _nla(2 | 0x8000, _tuple("10.244.1.7", "10.244.0.2", 5353, 40000))
    body = struct.pack("=BBH", 2, 0, 0) + attrs
    msg = struct.pack("=IHHII", 16 + len(body), (1 << 8) | 0, 0, 0, 0) + body
    (conn,) = parse(msg + msg[:8])  # a truncated second message is ignored
    assert (conn.src, conn.dst, conn.protocol, conn.dport) == ("10.244.0.2", "10.244.1.7", "TCP", 5353)


def test_the_flow_table_is_bounded_and_nodes_merge_without_double_counting():
    from policyd.observe.conntrack import Connection

    owner = {"10.244.0.2": "a/local", "10.244.1.2": "a/remote"}
    table = FlowTable(owner.get, lambda key: key == "a/local", limit=2)
    conns = [Connection("10.244.0.2", "10.244.1.2", "TCP", 80)] * 3 + [Connection("10.244.1.2", "10.244.0.2", "UDP", 53),
                                                                      Connection("10.244.1.2", "10.244.0.2", "UDP", 54),
                                                                      Connection("192.0.2.1", "192.0.2.2", "TCP", 22)]
    table.add(conns, now=5.0)
    doc = table.to_json("node-1")
    assert [(r["src"], r["dst"], r["port"], r["count"]) for r in doc["records"]] == [
        ("a/local", "a/remote", 80, 3), ("a/remote", "a/local", 53, 1)]
    assert doc["dropped"] == 1, "the third key did not fit; the node's own traffic is not recorded at all"
    other = document(["node-2"], [FlowRecord("a/local", "a/remote", "TCP", 80, 1.0, 9.0, 2)])
    merged = {r.key: r for r in merge([doc, other])}
    r = merged[("a/local", "a/remote", "TCP", 80)]
    assert (r.count, r.first, r.last) == (3, 1.0, 9.0)


GOOD = {"src": "default/frontend-0", "dst": "default/backend-0", "protocol": "TCP", "port": 80, "first": 1.0, "last": 2.0, "count": 3}


def _flows_doc(*records: object) -> dict:
    return {"kind": "FlowRecords", "version": 1, "nodes": ["node-1"], "records": list(records)}


@pytest.mark.parametrize("doc, says", [
    (None, "null, not an object"),
    ([], "list, not an object"),
    (_flows_doc({**GOOD, "count": -1}), "records[0].count: -1"),
    (_flows_doc({**GOOD, "protocol": "FOO"}), "records[0].protocol: 'FOO'"),
    (_flows_doc({**GOOD, "src": 7}), "records[0].src: 7"),
    (_flows_doc({**GOOD, "dst": "not an address"}), "records[0].dst"),
    (_flows_doc({**GOOD, "port": 0}), "records[0].port: 0"),
    (_flows_doc({**GOOD, "protocol": "ICMP"}), "ICMP has no ports"),
    (_flows_doc("text"), "records[0]: not an object"),
    ({"kind": "FlowRecords", "version": 1, "records": {}}, "records: not a list"),
])
def test_flow_records_a_user_will_meet_are_clear_errors(tmp_path, capsys, doc, says):
    """Bad flow files exit 2 naming the field, never 3 (issue 42, N5/N6)."""
    from policyd.cli import main

    (tmp_path / "flows.json").write_text(json.dumps(doc))
    assert main(["advise", "--flows", str(tmp_path / "flows.json"), "-f", str(ROOT / "examples" / "cluster")]) == 2
    assert says in capsys.readouterr().err


def test_deep_or_huge_flow_files_are_clear_errors(tmp_path, capsys):
    from policyd.cli import main

    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    assert main(["advise", "--flows", str(tmp_path / "deep.json"), "-f", str(ROOT / "examples" / "cluster")]) == 2
    assert "nested too deeply" in capsys.readouterr().err


def test_flows_of_pods_since_deleted_are_reported_and_skipped(tmp_path, capsys):
    from policyd.cli import main

    gone = {**GOOD, "src": "default/deleted-7f9"}
    (tmp_path / "flows.json").write_text(json.dumps(_flows_doc(gone)))
    assert main(["advise", "--flows", str(tmp_path / "flows.json"), "-f", str(ROOT / "examples" / "cluster")]) in (0, 1)
    err = capsys.readouterr().err
    assert "not in the cluster (deleted since?): their flows are skipped" in err and "default/deleted-7f9" in err, err
