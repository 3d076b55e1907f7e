"""What a peer leaves in a node's kernel, found and removed (realcluster/peers.py), in a
throwaway network namespace: kube-router's chains, their jumps from the built-in chains and
its ipsets, kube-network-policies' table, all gone; kube-proxy's chains in the same filter
table untouched (bench/run.py --only peers removes leftovers between agents on a live node)."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from policyd.lab.netns import add_namespace, delete_namespaces
from realcluster import peers


@pytest.fixture
def netns():
    name = f"pdpl{uuid.uuid4().hex[:6]}"
    add_namespace(name)
    try:
        yield name
    finally:
        delete_namespaces(name, exact=True)


def run(netns: str, *argv: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, *argv], check=True, capture_output=True)


def test_peer_leftovers_go_and_kube_proxy_stays(netns):
    ipt = ("iptables-nft", "-t", "filter")
    run(netns, *ipt, "-N", "KUBE-FORWARD")  # kube-proxy's
    run(netns, *ipt, "-A", "FORWARD", "-m", "comment", "--comment", "kubernetes forwarding rules", "-j", "KUBE-FORWARD")
    run(netns, *ipt, "-A", "KUBE-FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
    run(netns, "ipset", "create", "KUBE-SRC-ABCDEF", "hash:ip")  # kube-router's
    for chain in ("KUBE-ROUTER-FORWARD", "KUBE-ROUTER-INPUT", "KUBE-POD-FW-ABCDEF", "KUBE-NWPLCY-DEFAULT"):
        run(netns, *ipt, "-N", chain)
    run(netns, *ipt, "-I", "FORWARD", "1", "-m", "comment", "--comment", "kube-router netpol - ABC DEF", "-j", "KUBE-ROUTER-FORWARD")
    run(netns, *ipt, "-I", "INPUT", "1", "-j", "KUBE-ROUTER-INPUT")
    run(netns, *ipt, "-A", "KUBE-ROUTER-FORWARD", "-j", "KUBE-POD-FW-ABCDEF")
    run(netns, *ipt, "-A", "KUBE-POD-FW-ABCDEF", "-m", "set", "--match-set", "KUBE-SRC-ABCDEF", "src", "-j", "KUBE-NWPLCY-DEFAULT")
    run(netns, "nft", "add", "table", "inet", peers.KNP_TABLE)

    found = peers.leftovers(netns)
    assert sorted(found) == sorted([
        "nftables table inet kube-network-policies", "iptables chain KUBE-ROUTER-FORWARD", "iptables chain KUBE-ROUTER-INPUT",
        "iptables chain KUBE-POD-FW-ABCDEF", "iptables chain KUBE-NWPLCY-DEFAULT", "ipset KUBE-SRC-ABCDEF"])

    peers.remove_leftovers(netns)
    assert peers.leftovers(netns) == []
    save = subprocess.run(["ip", "netns", "exec", netns, "iptables-nft-save", "-t", "filter"],
                          capture_output=True, text=True, check=True).stdout
    assert '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD' in save
    assert "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP" in save
    assert "KUBE-ROUTER" not in save and "KUBE-POD-FW" not in save
