"""The iptables backend's pure parts: ipset entries, port matches, names within the
kernel's limits, and the diff against the fake legacy iptables/ipset (no root needed)."""

from __future__ import annotations

import ipaddress

import pytest

from policyd.compile.plan import BlockSetSpec, PortMatch
from policyd.dataplane.backend import ApplyError
from policyd.dataplane.config import DispatchMode, RenderConfig
from policyd.dataplane.render import block_elements, port_groups
from policyd.dataplane.rules import Rule
from policyd.ipt.fake import FakeIptBackend
from policyd.ipt.layout import Names, check_table, safe_comment
from policyd.ipt.spell import entries, rule_args
from policyd.model.objects import Direction, IPBlock
from policyd.reconcile.syncer import Syncer
from policyd.whatif.world import load_world


def block(cidr: str, *excepts: str) -> BlockSetSpec:
    return BlockSetSpec(IPBlock(ipaddress.ip_network(cidr), tuple(ipaddress.ip_network(e) for e in excepts)))


def ipset_entries(spec: BlockSetSpec) -> set[str]:
    fam = spec.block.cidr.version
    return {x for e in block_elements(spec, nomatch=True) for x in entries(e, fam)}


def test_ipblock_except_becomes_nomatch_and_a_slash_zero_two_halves():
    assert ipset_entries(block("10.0.0.0/8", "10.1.0.0/16", "10.2.3.4/32")) == {"10.0.0.0/8", "10.1.0.0/16 nomatch", "10.2.3.4 nomatch"}
    # hash:net cannot hold a /0: two /1 halves; an except equal to a half drops that half
    assert ipset_entries(block("0.0.0.0/0")) == {"0.0.0.0/1", "128.0.0.0/1"}
    assert ipset_entries(block("0.0.0.0/0", "0.0.0.0/1")) == {"128.0.0.0/1"}
    assert ipset_entries(block("::/0", "fd00::/8")) == {"::/1", "8000::/1", "fd00::/8 nomatch"}
    assert ipset_entries(block("192.168.1.1/32")) == {"192.168.1.1"}


def port_matches(ports: tuple[PortMatch, ...]) -> list[str]:
    """The ports as iptables matches (a rule of them alone, its comment and target cut off)."""
    return [rule_args(Rule.build([g], None, "")).split(" -m comment")[0] for g in port_groups(ports, Names.port_slots)]


def test_ports_use_multiport_within_its_fifteen_slots():
    assert port_matches((PortMatch("TCP", 80, 80, 0),)) == ["-p tcp -m tcp --dport 80"]
    assert port_matches((PortMatch("UDP", None, None, 0), PortMatch("UDP", 53, 53, 1))) == ["-p udp"], "the whole protocol wins"
    assert port_matches((PortMatch("TCP", 80, 90, 0), PortMatch("SCTP", 7, 7, 1))) == ["-p sctp -m sctp --dport 7", "-p tcp -m tcp --dport 80:90"]
    many = tuple(PortMatch("TCP", p, p, i) for i, p in enumerate(range(1000, 1020)))
    out = port_matches(many)
    assert out == ["-p tcp -m multiport --dports " + ",".join(str(p) for p in range(1000, 1015)),
                   "-p tcp -m multiport --dports " + ",".join(str(p) for p in range(1015, 1020))]


def test_names_fit_the_kernels_limits_and_tables_are_checked():
    n = Names("abcdefgh")
    assert len(n.pod_chain("some-namespace/" + "x" * 200, Direction.EGRESS)) <= 28
    assert len(n.spec_set(block("10.0.0.0/8"), 4)) <= 31 and len(n.ifaces(6)) <= 31
    assert all(len(n.dispatch(d, k)) <= 28 for d in Direction for k in ("if", "v4", "v6"))
    for bad in ("", "Policyd", "toolongname", "pd-x", "1pd"):
        with pytest.raises(ValueError, match="--table"):
            check_table(bad)


def test_comments_cannot_break_out_of_their_quotes():
    assert safe_comment('ns/p ingress[0] "; -j ACCEPT') == "ns/p ingress[0] __ -j ACCEPT"


@pytest.fixture(params=list(DispatchMode))
def synced(request):
    w = load_world(["examples/cluster", "examples/policies"])
    c = w.compile("node-1")
    s = Syncer(c, FakeIptBackend(), RenderConfig(mode=request.param))
    s.interfaces.refresh = lambda: None  # type: ignore[method-assign]
    s.interfaces.routes = {str(p.ips[0]): f"cali{i}" for i, p in enumerate(w.pods)}
    assert s.sync().ops > 0
    return w, c, s


def test_unchanged_state_sends_nothing_and_a_restart_adopts(synced):
    _, c, s = synced
    assert s.sync().ops == 0, "partial sync with nothing touched"
    assert s.sync(full=True).ops == 0, "terse full sync: reads back equal"
    s.believed = None
    assert s.sync().ops == 0, "complete listing (a restarted agent): adopts without a change"


def test_drift_is_repaired_by_a_full_sync(synced):
    """Chains are compared by the digest in their last rule (as with nftables): a flushed or
    truncated chain is found; an edit in the middle of a chain is not."""
    _, _, s = synced
    k = s.backend.kernel
    k.tables[4]["FORWARD"].clear()  # someone flushed FORWARD: our jump is gone in IPv4 only
    chain = next(n for n in k.tables[6] if n.startswith("POLICYD-IN-"))
    k.tables[6][chain].clear()  # and flushed a pod chain in IPv6 (which opens the pod)
    r = s.sync(full=True)
    assert r.ops > 0
    assert k.tables[4]["FORWARD"] == ["-j POLICYD-FORWARD"], "the jump is back"
    assert k.tables[6]["FORWARD"].count("-j POLICYD-FORWARD") == 1, "the family that kept its jump gets no second one"
    assert k.tables[6][chain] and k.tables[6][chain][-1].endswith("-j DROP")
    assert s.sync(full=True).ops == 0


def test_a_refused_batch_changes_no_table_and_the_next_sync_is_full(synced):
    _, c, s = synced
    before = {f: s.backend.kernel.save(f) for f in (4, 6)}
    real = s.backend.apply

    def broken(tx):
        tx.rules[6].append("-X POLICYD-NO-SUCH-CHAIN")
        real(tx)

    s.backend.apply = broken  # type: ignore[method-assign]
    c.delete_policy("default/allow-frontend-to-backend")
    with pytest.raises(ApplyError):
        s.sync()
    assert s.backend.kernel.save(6) == before[6], "an iptables restore is all or nothing"
    del s.backend.apply
    r = s.sync()
    assert r.full and r.ops > 0
    assert s.sync(full=True).ops == 0


def test_cleanup_removes_only_ours():
    b = FakeIptBackend()
    k = b.kernel
    k.restore(4, "*filter\n:OTHER - [0:0]\n-A FORWARD -j OTHER\nCOMMIT\n")
    k.ipset_line("create other hash:ip family inet")
    s = Syncer(load_world(["examples/cluster", "examples/policies"]).compile("node-1"), b, RenderConfig(mode=DispatchMode.ADDRESS))
    s.sync()
    assert b.delete_table()
    assert set(k.sets) == {"other"}
    assert k.tables[4] == {"INPUT": [], "FORWARD": ["-j OTHER"], "OUTPUT": [], "OTHER": []}
    assert k.tables[6] == {"INPUT": [], "FORWARD": [], "OUTPUT": []}
    assert b.read() is None and not b.delete_table()


def test_a_set_the_kernel_still_holds_is_destroyed_by_the_next_full_resync(synced, caplog):
    """The rules no longer name it, so the sync succeeds; the set is left and reported."""
    _, c, s = synced
    k = s.backend.kernel
    before = set(k.sets)
    c.delete_policy("default/allow-from-namespace")
    k.busy = set(before)
    assert s.sync().ops > 0, "the sync itself succeeds"
    gone = before - set(s.desired.ruleset.sets)
    assert gone and gone <= set(k.sets), "the kernel refused: the sets are still there"
    assert s.backend.leftover_sets == len(gone) and "left for the next full resync" in caplog.text
    k.busy = set()
    r = s.sync(full=True)
    assert r.ops == len(gone) and not gone & set(k.sets)
    assert s.sync(full=True).ops == 0
