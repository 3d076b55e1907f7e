"""The shape of one cluster: names, addresses and paths, derived from its name and options.
Pure: nothing here touches the machine."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from .paths import STATE_ROOT

FABRIC_NET = ipaddress.IPv4Network("172.31.250.0/24")
API_ADDR = FABRIC_NET.broadcast_address - 1  # the control plane's address on the fabric
CLUSTER_CIDR = ipaddress.ip_network("10.244.0.0/16")
SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/16")
API_SERVICE_IP = SERVICE_CIDR.network_address + 1
API_PORT = 6443
CNI_STYLES = ("bridge", "ptp")
PROXY_MODES = ("iptables", "nftables")
NAME_RE = re.compile(r"^[a-z0-9]{1,8}$")

# Paths a node's processes use as on any node; in the node's own mount namespace each is a
# bind mount of a directory of that node's state, so two nodes on one machine never share.
NODE_BINDS = ("/var/lib/kubelet", "/var/lib/containerd", "/run/containerd", "/etc/cni/net.d", "/var/lib/cni",
              "/var/log/pods", "/var/log/containers", "/run/netns", "/etc/kubernetes")
# Files likewise: each node's own iptables lock, as on separate machines (shared, one node's
# kube-proxy would hold up every other node's iptables-restore, policyd's included).
NODE_FILE_BINDS = ("/run/xtables.lock",)


@dataclass(frozen=True)
class Node:
    name: str  # the Kubernetes node name
    index: int  # 1-based
    netns: str
    state: Path

    @property
    def ip(self) -> ipaddress.IPv4Address:
        return FABRIC_NET.network_address + self.index

    @property
    def pod_cidr(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.244.{self.index}.0/24")

    @property
    def mount_ns(self) -> Path:
        return self.state.parent / "ns" / self.name

    @property
    def cgroup_root(self) -> str:
        """kubelet's cgroupRoot: a top-level cgroup named after the netns, unique per node."""
        return "/" + self.netns.replace(".", "-")

    def bind_source(self, target: str) -> Path:
        return self.state / "fs" / target.strip("/").replace("/", "_")

    @property
    def containerd_socket(self) -> Path:
        """The socket as seen from outside the node's mount namespace."""
        return self.bind_source("/run/containerd") / "containerd.sock"


@dataclass(frozen=True)
class Layout:
    name: str
    cni: str = "bridge"
    proxy_mode: str = "iptables"
    workers: int = 2

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name):
            raise ValueError(f"cluster name {self.name!r}: 1-8 of [a-z0-9]")
        if self.cni not in CNI_STYLES:
            raise ValueError(f"--cni must be one of {', '.join(CNI_STYLES)}, not {self.cni!r}")
        if self.proxy_mode not in PROXY_MODES:
            raise ValueError(f"--proxy-mode must be one of {', '.join(PROXY_MODES)}, not {self.proxy_mode!r}")
        if not 1 <= self.workers <= 8:
            raise ValueError("--workers must be 1 to 8")

    @property
    def prefix(self) -> str:
        """Every network namespace of this cluster is named `<prefix>.<role>`."""
        return f"pkc-{self.name}"

    @property
    def state(self) -> Path:
        return STATE_ROOT / self.name

    @property
    def fabric(self) -> str:
        return f"{self.prefix}.fabric"

    @property
    def control_plane(self) -> Node:
        """The control plane runs in the fabric namespace, with a mount namespace of its own."""
        return Node("control-plane", 0, self.fabric, self.state / "control-plane")

    @property
    def nodes(self) -> list[Node]:
        return [Node(f"node-{i}", i, f"{self.prefix}.node{i}", self.state / f"node-{i}") for i in range(1, self.workers + 1)]

    @property
    def server(self) -> str:
        return f"https://{API_ADDR}:{API_PORT}"

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig; usable from inside the fabric namespace (`cluster.sh kubectl`)."""
        return self.state / "admin.kubeconfig"
