"""The peers' install manifests and names (realcluster/peers.py): what bench/run.py --only
peers installs, and which kernel objects count as a peer's leftovers. kube-proxy shares the
filter table with kube-router, so its chains must never match."""

from __future__ import annotations

import yaml

from realcluster import peers


def test_versions_come_from_the_pinned_go_mod():
    assert peers.KUBE_NETWORK_POLICIES.version == "v0.8.0"
    assert peers.KUBE_ROUTER.version == "v2.1.0"
    assert peers.KUBE_ROUTER.image == "localhost/peers/kube-router:v2.1.0"


def test_manifests_run_the_local_image_and_never_pull():
    for peer in peers.PEERS:
        docs = [d for d in yaml.safe_load_all(peer.manifest()) if d]
        (ds,) = [d for d in docs if d["kind"] == "DaemonSet"]
        (container,) = ds["spec"]["template"]["spec"]["containers"]
        assert container["image"] == peer.image
        assert container["imagePullPolicy"] == "Never"
        assert ds["metadata"]["namespace"] == peers.NAMESPACE
        key, value = peer.selector.split("=")
        assert ds["spec"]["template"]["metadata"]["labels"][key] == value
        assert ds["spec"]["template"]["spec"]["hostNetwork"] is True


def test_kube_router_chains_and_sets_match_but_kube_proxy_ones_do_not():
    theirs = ["KUBE-ROUTER-INPUT", "KUBE-ROUTER-FORWARD", "KUBE-ROUTER-OUTPUT", "KUBE-POD-FW-4ZK3CD7RH2YDLU2X",
              "KUBE-NWPLCY-DEFAULT", "KUBE-NWPLCY-ABCDEF"]
    kube_proxy = ["KUBE-SERVICES", "KUBE-FORWARD", "KUBE-FIREWALL", "KUBE-PROXY-FIREWALL", "KUBE-NODEPORTS",
                  "KUBE-EXTERNAL-SERVICES", "KUBE-KUBELET-CANARY", "KUBE-PROXY-CANARY", "KUBE-SVC-ABC", "KUBE-SEP-ABC",
                  "KUBE-ROUTER", "INPUT", "FORWARD", "POLICYD-FWD"]
    assert all(peers.KUBE_ROUTER_CHAIN.match(c) for c in theirs)
    assert not any(peers.KUBE_ROUTER_CHAIN.match(c) for c in kube_proxy)
    assert peers.KUBE_ROUTER_SET.match("KUBE-SRC-ABCD") and peers.KUBE_ROUTER_SET.match("KUBE-DST-ABCD")
    assert not peers.KUBE_ROUTER_SET.match("policyd-peers-1")


def test_a_saved_rule_becomes_its_arguments_with_quoted_comments_whole():
    line = '-A FORWARD -m comment --comment "kube-router netpol - 4IA2OSFRMVNDXBVV" -j KUBE-ROUTER-FORWARD'
    assert peers._rule_args(line) == ["-m", "comment", "--comment", "kube-router netpol - 4IA2OSFRMVNDXBVV",
                                      "-j", "KUBE-ROUTER-FORWARD"]
