"""The lab's address families (pure): IPv6 mirrors of IPv4 slots, and what is refused."""

from __future__ import annotations

import ipaddress

import pytest

from policyd.lab.families import addresses, check, node_cidrs, slot_of, v4_for, v6_for
from policyd.lab.records import LabError

A = ipaddress.ip_address


def test_mirrors_round_trip_and_foreign_ipv6_mirrors_nothing():
    for text in ("10.244.0.2", "10.244.1.254", "192.168.255.1"):
        ip4 = ipaddress.IPv4Address(text)
        assert v4_for(v6_for(ip4)) == ip4
    assert str(v6_for(ipaddress.IPv4Address("10.244.1.7"))) == "fd00:10:244:1::7"
    for text in ("fd00:10:244:1::256", "fd00:10:244:1::a", "fd01:10:244:1::7", "fd00:10:244:1:1::7", "2001:db8::1"):
        assert v4_for(ipaddress.IPv6Address(text)) is None, text


def test_addresses_and_ranges_follow_the_family_primary_first():
    slot = A("10.244.1.7")
    assert addresses(slot, "ipv4") == (slot,)
    assert addresses(slot, "ipv6") == (A("fd00:10:244:1::7"),)
    assert addresses(slot, "dual") == (slot, A("fd00:10:244:1::7"))
    assert node_cidrs(ipaddress.IPv4Network("10.244.1.0/24"), "dual") == ["10.244.1.0/24", "fd00:10:244:1::/64"]


def test_explicit_addresses_name_one_slot_of_the_labs_families():
    assert slot_of("ns/p", (A("10.244.0.9"), A("fd00:10:244::9")), "dual") == A("10.244.0.9")
    assert slot_of("ns/p", (A("fd00:10:244::9"),), "ipv6") == A("10.244.0.9")
    assert slot_of("ns/p", (), "dual") is None
    with pytest.raises(LabError, match="not of the lab's --ip-family ipv6"):
        slot_of("ns/p", (A("10.244.0.9"),), "ipv6")
    with pytest.raises(LabError, match="its mirror"):
        slot_of("ns/p", (A("10.244.0.9"), A("fd00:10:244::8")), "dual")


def test_ipv6_labs_need_an_ipv4_cluster_cidr_cut_in_24s():
    check("ipv4", "10.0.0.0/8", 16)
    check("dual", "10.244.0.0/16", 24)
    with pytest.raises(LabError, match="needs 24"):
        check("dual", "10.244.0.0/16", 20)
    with pytest.raises(LabError, match="IPv4 --cluster-cidr"):
        check("ipv6", "fd00::/48", 24)
    with pytest.raises(LabError, match="one of ipv4, ipv6, dual"):
        check("ipv5", "10.244.0.0/16", 24)


def test_more_nodes_without_a_pod_cidr_than_the_cluster_cidr_holds_is_a_clear_error(tmp_path, capsys):
    """257 Nodes without spec.podCIDR need 257 /24s of 10.244.0.0/16, which has 256: exit 2
    naming the way out, not an internal error (issue 42, N7)."""
    import yaml

    from policyd.cli import main

    nodes = [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"n{i}"}} for i in range(257)]
    (tmp_path / "nodes.yaml").write_text(yaml.safe_dump_all(nodes))
    assert main(["matrix", "-f", str(tmp_path / "nodes.yaml")]) == 2
    err = capsys.readouterr().err
    assert "257 nodes without a podCIDR need 257 /24 ranges of --cluster-cidr 10.244.0.0/16, which has 256" in err, err
    nodes[0]["spec"] = {"podCIDR": "10.245.0.0/24"}  # one with its own: the other 256 fit
    (tmp_path / "nodes.yaml").write_text(yaml.safe_dump_all(nodes))
    assert main(["matrix", "-f", str(tmp_path / "nodes.yaml")]) == 0
