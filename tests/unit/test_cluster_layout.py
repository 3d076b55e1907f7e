"""The real cluster's shape in each IP family (realcluster/layout.py, config.py; pure): the
IPv4 default as it always was, IPv6 single-stack and dual-stack with the primary family first
everywhere Kubernetes reads an order (node IPs, Service and pod ranges, the CNI's ranges)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from realcluster import config
from realcluster.layout import Layout


def args_of(argv: list[str]) -> dict[str, str]:
    return dict(a.removeprefix("--").split("=", 1) for a in argv if a.startswith("--") and "=" in a)


def test_ipv4_is_the_default_and_unchanged():
    lay = Layout("t")
    node = lay.nodes[0]
    assert lay.families == (4,) and lay.server == "https://172.31.250.254:6443"
    api = args_of(config.apiserver_args(lay, Path("/p"), Path("/a"), Path("/l")))
    assert api["advertise-address"] == "172.31.250.254" and api["bind-address"] == "0.0.0.0"
    assert api["service-cluster-ip-range"] == "10.96.0.0/16"
    assert args_of(config.kubelet_args(lay, node, Path("/c"), Path("/k")))["node-ip"] == "172.31.250.1"
    ipam = json.loads(config.cni_conflist(lay, node)[1])["plugins"][0]["ipam"]
    assert ipam["ranges"] == [[{"subnet": "10.244.1.0/24"}]] and ipam["routes"] == [{"dst": "0.0.0.0/0"}]


def test_ipv6_single_stack():
    lay = Layout("t", ip_family="ipv6")
    node = lay.nodes[1]
    assert lay.families == (6,) and lay.server == "https://[fd00:31:250::fe]:6443"
    api = args_of(config.apiserver_args(lay, Path("/p"), Path("/a"), Path("/l")))
    assert api["advertise-address"] == "fd00:31:250::fe" and api["bind-address"] == "::"
    assert api["service-cluster-ip-range"] == "fd00:10:96::/112"
    assert args_of(config.kubelet_args(lay, node, Path("/c"), Path("/k")))["node-ip"] == "fd00:31:250::2"
    ipam = json.loads(config.cni_conflist(lay, node)[1])["plugins"][0]["ipam"]
    assert ipam["ranges"] == [[{"subnet": "fd00:10:244:2::/64"}]] and ipam["routes"] == [{"dst": "::/0"}]
    proxy = config.kube_proxy_config(lay, node, Path("/k"))
    assert "clusterCIDR: fd00:10:244::/56" in proxy and "bindAddress: fd00:31:250::2" in proxy


def test_dual_stack_puts_ipv4_first_everywhere():
    lay = Layout("t", ip_family="dual")
    node = lay.nodes[0]
    assert lay.families == (4, 6) and lay.server == "https://172.31.250.254:6443"
    api = args_of(config.apiserver_args(lay, Path("/p"), Path("/a"), Path("/l")))
    assert api["service-cluster-ip-range"] == "10.96.0.0/16,fd00:10:96::/112" and api["bind-address"] == "::"
    assert args_of(config.kubelet_args(lay, node, Path("/c"), Path("/k")))["node-ip"] == "172.31.250.1,fd00:31:250::1"
    ipam = json.loads(config.cni_conflist(lay, node)[1])["plugins"][0]["ipam"]
    assert ipam["ranges"] == [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]]
    assert "clusterCIDR: 10.244.0.0/16,fd00:10:244::/56" in config.kube_proxy_config(lay, node, Path("/k"))


def test_an_unknown_family_is_refused():
    with pytest.raises(ValueError, match="--ip-family must be one of ipv4, ipv6, dual"):
        Layout("t", ip_family="ipv5")
