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
# IPv6 (--ip-family ipv6|dual): unique local addresses, the same plan as IPv4's.
FABRIC_NET6 = ipaddress.IPv6Network("fd00:31:250::/64")
API_ADDR6 = FABRIC_NET6.network_address + 0xfe
CLUSTER_CIDR6 = ipaddress.IPv6Network("fd00:10:244::/56")
SERVICE_CIDR6 = ipaddress.IPv6Network("fd00:10:96::/112")
API_SERVICE_IP6 = SERVICE_CIDR6.network_address + 1
API_PORT = 6443
CNI_STYLES = ("bridge", "ptp")
PROXY_MODES = ("iptables", "nftables")
# ipv4: the default; ipv6: IPv6 single-stack (pods, Services, nodes); dual: both, IPv4 primary.
IP_FAMILIES = ("ipv4", "ipv6", "dual")
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
    def ip6(self) -> ipaddress.IPv6Address:
        return FABRIC_NET6.network_address + self.index

    @property
    def pod_cidr6(self) -> ipaddress.IPv6Network:
        return ipaddress.IPv6Network(f"fd00:10:244:{self.index:x}::/64")

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
    ip_family: str = "ipv4"

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name):
            raise ValueError(f"cluster name {self.name!r}: 1-8 of [a-z0-9]")
        if self.cni not in CNI_STYLES:
            raise ValueError(f"--cni must be one of {', '.join(CNI_STYLES)}, not {self.cni!r}")
        if self.proxy_mode not in PROXY_MODES:
            raise ValueError(f"--proxy-mode must be one of {', '.join(PROXY_MODES)}, not {self.proxy_mode!r}")
        if not 1 <= self.workers <= 8:
            raise ValueError("--workers must be 1 to 8")
        if self.ip_family not in IP_FAMILIES:
            raise ValueError(f"--ip-family must be one of {', '.join(IP_FAMILIES)}, not {self.ip_family!r}")

    @property
    def families(self) -> tuple[int, ...]:
        """The cluster's IP families, the primary first."""
        return {"ipv4": (4,), "ipv6": (6,), "dual": (4, 6)}[self.ip_family]

    def node_ips(self, node: Node) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """The node's addresses in the cluster's families, the primary first (kubelet --node-ip)."""
        return [node.ip if f == 4 else node.ip6 for f in self.families]

    def pod_cidrs(self, node: Node) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [node.pod_cidr if f == 4 else node.pod_cidr6 for f in self.families]

    @property
    def cluster_cidrs(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [CLUSTER_CIDR if f == 4 else CLUSTER_CIDR6 for f in self.families]

    @property
    def service_cidrs(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [SERVICE_CIDR if f == 4 else SERVICE_CIDR6 for f in self.families]

    @property
    def api_addr(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """The API server's address in the primary family (its `kubernetes` Service's endpoint)."""
        return API_ADDR6 if self.families[0] == 6 else API_ADDR

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
        host = f"[{self.api_addr}]" if self.api_addr.version == 6 else str(self.api_addr)
        return f"https://{host}:{API_PORT}"

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig; usable from inside the fabric namespace (`cluster.sh kubectl`)."""
        return self.state / "admin.kubeconfig"
