"""Reading the kernel never raises on what someone else wrote into policyd's table (issue 42,
N1): any verdict-map entry, set element or object body a listing may carry parses, and what
policyd never writes comes back as something that differs from anything desired, so a sync
removes it; on the fake kernel, the agent converges to a from-scratch render."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyd.dataplane.config import DispatchMode, RenderConfig
from policyd.dataplane.objects import FOREIGN_TARGET, is_foreign
from policyd.nft.fake import FakeBackend
from policyd.nft.parse import parse_listing
from policyd.nft.spell import Transaction
from policyd.reconcile.syncer import Syncer
from policyd.whatif.world import load_world

TABLE = "policyd"
VERDICTS = [{"accept": None}, {"drop": None}, {"continue": None}, {"return": None}, {"goto": {"target": "x"}},
            {"jump": {"target": 7}}, {"jump": {}}, {"queue": {"num": 1}}, None, "accept", []]

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                           lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
                           max_leaves=12)


def listing(*items: dict[str, Any]) -> dict[str, Any]:
    return {"nftables": [{"metainfo": {"json_schema_version": 1}}, {"table": {"family": "inet", "name": TABLE}}, *items]}


@pytest.mark.parametrize("verdict", VERDICTS)
def test_a_map_entry_policyd_never_writes_is_foreign(verdict):
    rs = parse_listing(listing({"map": {"family": "inet", "table": TABLE, "name": "m", "type": "ifname", "map": "verdict",
                                        "elem": [["cali1", verdict], ["cali2", {"jump": {"target": "pod-in-x"}}]]}}), TABLE)
    assert rs.maps["m"].elements == (("cali1", FOREIGN_TARGET), ("cali2", "pod-in-x"))


@pytest.mark.parametrize("elem", [{"elem": {"val": {"weird": 1}}}, {"set": [1]}, True, None, {"prefix": {"addr": 1}},
                                  {"concat": [{"x": 1}]}])
def test_a_set_element_policyd_never_writes_is_foreign(elem):
    rs = parse_listing(listing({"set": {"family": "inet", "table": TABLE, "name": "s", "type": "ipv4_addr",
                                        "elem": ["10.0.0.1", {"elem": {"val": "10.0.0.2", "timeout": 30, "comment": "x"}}, elem]}}), TABLE)
    elems = rs.sets["s"].elements
    assert {"10.0.0.1", "10.0.0.2"} < elems and sum(map(is_foreign, elems)) == 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["set", "map", "chain", "rule", "table", "element", "junk"]),
                          st.dictionaries(st.sampled_from(["name", "chain", "type", "elem", "hook", "prio", "policy", "expr",
                                                           "comment", "handle", "flags"]), json_values, max_size=6)),
                max_size=6))
def test_parsing_a_listing_never_raises(items):
    parse_listing(listing(*({kind: {"family": "inet", "table": TABLE, **body}} for kind, body in items)), TABLE)


@pytest.fixture(params=list(DispatchMode))
def agent(request):
    w = load_world(["examples/cluster", "examples/policies/allow-frontend-to-backend.yaml",
                    "examples/policies/default-deny-egress-allow-dns.yaml"])
    s = Syncer(w.compile("node-1"), FakeBackend(), RenderConfig(mode=request.param))
    s.interfaces.refresh = lambda: None  # type: ignore[method-assign]
    s.interfaces.routes = {str(p.ips[0]): f"cali{i}" for i, p in enumerate(w.pods)}
    s.sync()
    return s


def commit(fb: FakeBackend, *cmds: dict[str, Any]) -> None:
    """What `nft -j -f` of someone else's commands does to the fake kernel."""
    tx = Transaction()
    for c in cmds:
        (verb, obj), = c.items()
        tx.add(verb, obj)
    fb.apply(tx)


@pytest.mark.parametrize("verdict", VERDICTS[:5])
@pytest.mark.parametrize("own_key", [True, False])
def test_the_agent_repairs_a_foreign_map_entry(agent, verdict, own_key):
    fb = agent.backend
    name, m = next((n, m) for n, m in fb.ruleset.maps.items() if m.elements)
    key = m.elements[0][0] if own_key else ("10.99.0.1" if name.endswith(("-v4", "-v6")) else "foo0")
    if own_key:
        commit(fb, {"delete": {"element": {"family": "inet", "table": TABLE, "name": name, "elem": [[key, {"jump": {"target": m.elements[0][1]}}]]}}})
    commit(fb, {"add": {"element": {"family": "inet", "table": TABLE, "name": name, "elem": [[key, verdict]]}}})
    assert [d.kind for d in agent.check()] == ["map-elements"]
    r = agent.sync(full=True)
    assert [d.kind for d in r.drift] == ["map-elements"]
    assert fb.read().same_as(agent.desired.ruleset) and agent.check() == [] and agent.sync(full=True).ops == 0


def test_the_agent_repairs_a_foreign_set_element(agent):
    fb = agent.backend
    name = next(n for n, s in fb.ruleset.sets.items() if n.startswith("sel-") and s.elements)
    commit(fb, {"add": {"element": {"family": "inet", "table": TABLE, "name": name, "elem": [{"range": [{"x": 1}, 2]}]}}})
    agent.next_element_look = float("-inf")
    assert [d.kind for d in agent.check()] == ["set-elements"]
    r = agent.sync(full=True)
    assert [d.kind for d in r.drift] == ["set-elements"]
    assert fb.read().same_as(agent.desired.ruleset) and agent.sync(full=True).ops == 0
    assert json.dumps(fb.transactions[-2].commands[0]) == json.dumps({"flush": {"set": {"family": "inet", "table": TABLE, "name": name}}})
