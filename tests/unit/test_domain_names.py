"""ClusterNetworkPolicy domainNames, the pure parts: the API's semantics (names, wildcards, case,
the final dot; Accept rules of the Admin tier only), reading DNS answers with dnspython
(CNAME chains, classes, hostile messages), DNS over TCP put back together, and the learner's
decisions, against expectations written from the API's text and RFC 1035."""

from __future__ import annotations

import struct

import dns.message
import dns.rrset
import pytest

from policyd.compile.evaluate import Endpoint, Evaluator
from policyd.compile.plan import DomainSetSpec
from policyd.model import names
from policyd.model.manifests import Manifests, load_documents
from policyd.model.objects import Action
from policyd.names import answers
from policyd.names.learner import Learner, Limits, Target
from policyd.names.packets import FIN, Packet
from policyd.names.tcp import Streams
from tests.cnp_validation_cases import cnp_object, egress, spec

# --- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern,qname,match", [
    ("kubernetes.io", "kubernetes.io", True), ("kubernetes.io", "www.kubernetes.io", False),
    ("kubernetes.io", "my-kubernetes.io", False), ("blog.kubernetes.io", "kubernetes.io", False),
    ("*.kubernetes.io", "www.kubernetes.io", True), ("*.kubernetes.io", "latest.blog.kubernetes.io", True),
    ("*.kubernetes.io", "kubernetes.io", False), ("*.kubernetes.io", "wikipedia.org", False),
    ("kubernetes.io", "KUBERNETES.IO.", True), ("*.kubernetes.io", "WWW.Kubernetes.io.", True),
])
def test_a_name_matches_as_the_api_says(pattern, qname, match):
    """The CRD's examples, word for word; names compare without case and without the root's dot."""
    assert names.matches(names.normalize(pattern), qname) is match


def parse_cnp(spec_: dict):
    m = Manifests()
    load_documents("t", __import__("json").dumps(cnp_object("p", spec_)), m)
    return m


@pytest.mark.parametrize("domain_names,accepted", [
    (["example.com"], True), (["Example.COM."], True), (["*.example.com"], True), (["a_b.example.com"], True),
    (["example"], False), (["*.com"], False), (["a.*.example.com"], False), (["*example.com"], False),
    (["-a.example.com"], False), ([], False), (["x.example.com"] * 2, False), ([f"n{i}.example.com" for i in range(25)], True),
    ([f"n{i}.example.com" for i in range(26)], False),
])
def test_domain_names_are_validated_as_the_crd_does(domain_names, accepted):
    m = parse_cnp(egress({"action": "Accept", "to": [{"domainNames": domain_names}]}))
    cnp = m.cluster_policies[0] if m.cluster_policies else None
    assert (not m.problems and cnp is not None and not cnp.invalid) is accepted, (m.problems, cnp and cnp.invalid)


def test_an_admin_accept_peer_is_a_name_set_and_others_fail_closed():
    accept = parse_cnp(egress({"action": "Accept", "to": [{"domainNames": ["API.example.com.", "*.cdn.example.com"]}]}))
    assert accept.cluster_policies[0].egress[0].peers[0].domain_names == ("api.example.com", "*.cdn.example.com")
    deny = parse_cnp(egress({"action": "Deny", "to": [{"domainNames": ["example.com"]}]})).cluster_policies[0]
    assert deny.egress[0].peers[0].unsupported and "Accept rules only" in deny.notes[0]
    base = parse_cnp(spec(tier="Baseline", egress=[{"action": "Accept", "to": [{"domainNames": ["example.com"]}]}])).cluster_policies[0]
    assert base.egress[0].peers[0].unsupported and "Admin tier" in base.notes[0]


def test_the_engine_admits_a_name_only_through_what_was_learned():
    """The subject's egress to an address: denied (the rule after it denies everything)
    unless the address was learned for a listed name; a learned address of an unlisted
    name is not admitted."""
    import ipaddress

    from policyd.whatif.world import load_world

    m = parse_cnp(egress({"action": "Accept", "to": [{"domainNames": ["api.example.com"]}]},
                         {"action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}))
    assert not m.problems
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        Path(d, "p.json").write_text(__import__("json").dumps(cnp_object("p", egress(
            {"action": "Accept", "to": [{"domainNames": ["api.example.com"]}]}, {"action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}))))
        w = load_world(["examples/cluster", d])
    c = w.compile()
    pod = next(p for p in w.pods if p.name.startswith("frontend"))
    out = Endpoint(ipaddress.ip_address("198.51.100.10"))

    def verdict(learned):
        return Evaluator(c, learned).verdict(Endpoint(pod.ips[0], pod), out, "TCP", 443)

    assert not verdict(None).allowed
    v = verdict(lambda s, ip: ip == out.ip and names.any_matches(s.names, "api.example.com"))
    assert v.allowed and v.egress.decided_by.action is Action.ACCEPT and isinstance(v.egress.decided_by.peer, DomainSetSpec)
    assert not verdict(lambda s, ip: ip == out.ip and names.any_matches(s.names, "other.example.com")).allowed


# --- answers ----------------------------------------------------------------------------------


def response(qname: str, *records: str, qtype: str = "A", rdclass: str = "IN") -> bytes:
    q = dns.message.make_query(qname, qtype, rdclass)
    r = dns.message.make_response(q)
    for text in records:
        name, ttl, cls, typ, data = text.split(maxsplit=4)
        r.answer.append(dns.rrset.from_text(name, int(ttl), cls, typ, data))
    return r.to_wire()


def test_an_answer_gives_the_addresses_through_its_cname_chain_with_the_smallest_ttl():
    wire = response("WWW.example.test.", "www.example.test. 300 IN CNAME edge.cdn.example.test.",
                    "edge.cdn.example.test. 60 IN CNAME edge2.cdn.example.test.", "edge2.cdn.example.test. 600 IN A 198.51.100.20",
                    "unrelated.example.test. 30 IN A 198.51.100.99")
    got = answers.parse(wire)
    assert got.qname == "www.example.test" and got.addresses == (("198.51.100.20", 60),)


def test_records_of_another_name_class_or_type_teach_nothing():
    assert answers.parse(response("a.example.test.", "b.example.test. 30 IN A 198.51.100.1")).addresses == ()
    assert answers.parse(response("a.example.test.", "a.example.test. 30 IN TXT hello")).addresses == ()
    with pytest.raises(answers.Unreadable, match="class CH"):
        answers.parse(response("a.example.test.", rdclass="CH"))


@pytest.mark.parametrize("wire", [
    b"", b"\x00" * 11, dns.message.make_query("a.example.test.", "A").to_wire(),  # a query, not a response
    # a compression pointer to itself
    struct.pack("!HHHHHH", 1, 0x8180, 1, 1, 0, 0) + b"\x01a\x00\x00\x01\x00\x01" + b"\xc0\x1d" + b"\x00\x01\x00\x01\x00\x00\x00\x1e\x00\x04\x01\x02\x03\x04",
])
def test_a_hostile_or_broken_message_is_unreadable_never_an_exception_of_another_kind(wire):
    with pytest.raises(answers.Unreadable):
        answers.parse(wire)


def test_thousands_of_answers_teach_a_bounded_number():
    records = [f"a.example.test. 30 IN A 10.{i // 256}.{i % 256}.1" for i in range(3000)]
    got = answers.parse(response("a.example.test.", *records))
    assert len(got.addresses) == answers.MAX_ADDRESSES and got.truncated


# --- DNS over TCP -------------------------------------------------------------------------------


def segment(seq: int, data: bytes, flags: int = 0x18) -> Packet:
    return Packet("10.0.0.53", "10.0.0.2", 4, 6, 53, 40000, data, seq, flags)


def test_a_message_over_three_segments_is_read_whole_and_its_segments_held_until_then():
    msg = response("a.example.test.", "a.example.test. 30 IN A 198.51.100.1")
    framed = len(msg).to_bytes(2, "big") + msg
    s = Streams()
    parts = [framed[:1], framed[1:10], framed[10:]]
    first = s.feed(1, segment(1000, parts[0]), 0.0)
    assert first.messages == [] and first.release == []
    # a retransmission of what was seen passes at once; a segment after a gap waits
    assert s.feed(9, segment(1000, parts[0]), 0.0).release == [9]
    third = s.feed(3, segment(1000 + 10, parts[2]), 0.0)
    assert third.messages == [] and third.release == []
    second = s.feed(2, segment(1001, parts[1]), 0.0)
    assert second.messages == [msg] and sorted(second.release) == [1, 2, 3]
    assert s.feed(4, segment(1000 + len(framed), b"", FIN), 0.0).release == [4]


def test_a_message_that_never_completes_is_given_up_after_its_time():
    s = Streams()
    s.feed(1, segment(7, b"\x00\x40abc"), 0.0)
    assert s.expire(0.5, 1.0) == [] and s.expire(1.5, 1.0) == [1]


# --- the learner ---------------------------------------------------------------------------------


class Scope:
    def __init__(self, targets):
        self.t = targets

    def targets(self, address):
        return ("default/f1", self.t) if address == "10.0.0.2" else (None, ())


class Writer:
    def __init__(self, fail=False):
        self.added, self.deleted, self.fail = [], [], fail

    def add(self, entries):
        if self.fail:
            raise OSError("refused")
        self.added.append(entries)

    def delete(self, entries):
        self.deleted.append(entries)


def udp(dst: str, payload: bytes) -> bytes:
    body = struct.pack("!HHHH", 53, 40000, 8 + len(payload), 0) + payload
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0, 64, 17, 0, bytes([10, 0, 0, 53]),
                       bytes(int(x) for x in dst.split("."))) + body


TARGETS = (Target(("api.example.test", "*.cdn.example.test"), {4: "fq-a-v4", 6: "fq-a-v6"}),)


def test_the_learner_writes_what_a_listed_name_answered_and_passes_the_rest():
    w = Writer()
    lr = Learner(Scope(TARGETS), w, fail_open=True, limits=Limits(min_ttl=30, max_ttl=100), clock=lambda: 0.0)
    ans = response("api.example.test.", "api.example.test. 5 IN A 198.51.100.10", "api.example.test. 500 IN AAAA 2001:db8::10")
    assert lr.handle(1, udp("10.0.0.2", ans)) == [(1, True)]
    assert w.added == [{"fq-a-v4": [("198.51.100.10", 30.0)], "fq-a-v6": [("2001:db8::10", 100.0)]}], "TTLs clamped"
    other = response("other.example.test.", "other.example.test. 30 IN A 198.51.100.30")
    assert lr.handle(2, udp("10.0.0.2", other)) == [(2, True)] and len(w.added) == 1
    assert lr.handle(3, udp("10.9.9.9", ans)) == [(3, True)] and len(w.added) == 1, "not a local pod's"
    assert lr.stats.passed == {"no domainNames rule of the pod lists the name": 1, "not a local pod's address": 1}
    lr.forget_pod("default/f1")
    assert w.deleted == [{"fq-a-v4": ["198.51.100.10"], "fq-a-v6": ["2001:db8::10"]}]


@pytest.mark.parametrize("fail_open", [True, False])
def test_what_cannot_be_read_or_written_passes_or_is_dropped_as_the_fail_mode_says(fail_open):
    ans = response("api.example.test.", "api.example.test. 5 IN A 198.51.100.10")
    lr = Learner(Scope(TARGETS), Writer(fail=True), fail_open=fail_open)
    assert lr.handle(1, udp("10.0.0.2", ans)) == [(1, fail_open)]
    assert lr.handle(2, udp("10.0.0.2", b"\x00" * 5)) == [(2, fail_open)]
    assert lr.handle(3, b"junk") == [(3, fail_open)]
    assert sum((lr.stats.passed if fail_open else lr.stats.dropped).values()) == 3


def test_a_pod_learns_no_more_than_its_limit():
    w = Writer()
    lr = Learner(Scope(TARGETS), w, True, Limits(per_pod=2), clock=lambda: 0.0)
    recs = [f"api.example.test. 30 IN A 198.51.100.{i}" for i in range(5)]
    lr.handle(1, udp("10.0.0.2", response("api.example.test.", *recs)))
    assert sum(len(v) for v in w.added[0].values()) == 2 and lr.stats.over_limit == 3 and lr.held_entries == 2


def test_explain_with_a_name_judges_the_address_as_learned_for_it(capsys):
    """`policyd explain --name`: allowed through the domainNames rule for a listed name (the
    rule and its names shown), denied for another name, a bad name refused (exit 2)."""
    from policyd.cli import main

    files = ["-f", "examples/cluster", "-f", "examples/fqdn/frontend-egress-by-name.yaml"]
    ends = ["--from", "default/frontend-36f03", "--to", "198.51.100.10"]
    assert main(["explain", *files, *ends, "--name", "API.example.test."]) == 0
    out = capsys.readouterr().out
    assert "ALLOWED" in out and "egress rule 1 'allowed-names'" in out and "domainNames api.example.test" in out
    assert main(["explain", *files, *ends, "--name", "other.example.test"]) == 1
    assert "its address was not learned for one of those names" in capsys.readouterr().out
    assert main(["explain", *files, *ends]) == 1, "without --name nothing is learned"
    assert main(["explain", *files, *ends, "--name", "bad name"]) == 2
