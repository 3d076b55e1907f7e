"""Nodes and pods as network namespaces, wired the way CNIs wire them.

* routed (Calico-style, the default): host-side veth `cali…` with no address, proxy ARP,
  a /32 (/128) route per pod; the pod routes everything via 169.254.1.1 (fe80::1).
* bridge (bridge/flannel-style): host-side `veth…` ports on a `cni0` bridge that holds the
  gateway address; bridged traffic reaches the inet hooks through br_netfilter.

Nodes hang off one fabric namespace with per-node pod-CIDR routes (what Calico's BGP would
install), so cross-node traffic is routed for real. Every namespace is named
`<prefix>.<role>`: the dot never occurs in a prefix, so `delete_namespaces(prefix + ".")`
removes exactly one topology's namespaces.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..dataplane.cni import calico_interface
from ..model.objects import Pod
from .families import node_v6, v6_for
from .netns import add_namespace, delete_namespaces, ip, sysctl

FABRIC_NET = ipaddress.IPv4Network("172.31.255.0/24")


@dataclass
class PodHandle:
    pod: Pod
    netns: str
    host_if: str
    control: str
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class NodeHandle:
    name: str
    netns: str
    index: int
    pod_cidr: ipaddress.IPv4Network
    pods: dict[str, PodHandle] = field(default_factory=dict)

    @property
    def fabric_ip(self) -> ipaddress.IPv4Address:
        return FABRIC_NET.network_address + 1 + self.index


class Topology:
    def __init__(self, prefix: str, mode: str = "routed", state_dir: str | None = None, create: bool = True) -> None:
        """`create` False attaches to a topology built earlier (by another process), whose
        nodes the caller re-adds with `attach_node`."""
        if mode not in ("routed", "bridge"):
            raise ValueError("mode is routed or bridge")
        if "." in prefix:
            raise ValueError("a topology prefix has no dot")
        self.prefix = prefix
        self.mode = mode
        self.fabric = f"{prefix}.fabric"
        self.nodes: dict[str, NodeHandle] = {}
        self.state_dir = Path(state_dir or f"/run/policyd/{prefix}")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if create:
            self._create_fabric()

    def _create_fabric(self) -> None:
        add_namespace(self.fabric)
        sysctl(self.fabric, "net.ipv4.ip_forward", "1")
        sysctl(self.fabric, "net.ipv6.conf.all.forwarding", "1")
        ip("link", "add", "fab", "type", "bridge", ns=self.fabric)
        ip("addr", "add", f"{FABRIC_NET.broadcast_address - 1}/{FABRIC_NET.prefixlen}", "dev", "fab", ns=self.fabric)
        ip("-6", "addr", "add", "fd00:ffff::fe/64", "dev", "fab", "nodad", ns=self.fabric)
        ip("link", "set", "fab", "up", ns=self.fabric)

    # --- nodes ------------------------------------------------------------------------

    def attach_node(self, name: str, index: int, pod_cidr: ipaddress.IPv4Network) -> NodeHandle:
        node = NodeHandle(name, f"{self.prefix}.node{index}", index, pod_cidr)
        self.nodes[name] = node
        return node

    def add_node(self, name: str, pod_cidr: ipaddress.IPv4Network) -> NodeHandle:
        idx = len(self.nodes)
        node = NodeHandle(name, f"{self.prefix}.node{idx}", idx, pod_cidr)
        add_namespace(node.netns)
        for key in ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"):
            sysctl(node.netns, key, "1")
        ip("link", "add", "uplink", "type", "veth", "peer", "name", f"n{idx}", "netns", self.fabric, ns=node.netns)
        ip("addr", "add", f"{node.fabric_ip}/{FABRIC_NET.prefixlen}", "dev", "uplink", ns=node.netns)
        ip("link", "set", "uplink", "up", ns=node.netns)
        ip("-6", "addr", "add", f"fd00:ffff::{idx + 1}/64", "dev", "uplink", "nodad", ns=node.netns)
        ip("route", "add", "default", "via", str(FABRIC_NET.broadcast_address - 1), ns=node.netns)
        ip("-6", "route", "add", "default", "via", "fd00:ffff::fe", ns=node.netns)
        ip("link", "set", f"n{idx}", "master", "fab", "up", ns=self.fabric)
        ip("route", "add", str(pod_cidr), "via", str(node.fabric_ip), ns=self.fabric)
        ip("-6", "route", "add", str(node_v6(pod_cidr)), "via", f"fd00:ffff::{idx + 1}", ns=self.fabric)
        if self.mode == "bridge":
            gw = pod_cidr.network_address + 1
            ip("link", "add", "cni0", "type", "bridge", ns=node.netns)
            ip("addr", "add", f"{gw}/{pod_cidr.prefixlen}", "dev", "cni0", ns=node.netns)
            ip("-6", "addr", "add", f"{v6_for(gw)}/64", "dev", "cni0", "nodad", ns=node.netns)
            ip("link", "set", "cni0", "up", ns=node.netns)
            sysctl(node.netns, "net.bridge.bridge-nf-call-iptables", "1")
            sysctl(node.netns, "net.bridge.bridge-nf-call-ip6tables", "1")
        self.nodes[name] = node
        return node

    # --- pods -------------------------------------------------------------------------

    def add_pod(self, pod: Pod, tcp: list[int], udp: list[int]) -> PodHandle:
        node = self.nodes[pod.node or ""]
        h = hashlib.sha1(pod.key.encode()).hexdigest()[:8]
        netns = f"{self.prefix}.pod-{h}"
        host_if = calico_interface(pod.key) if self.mode == "routed" else "veth" + h
        add_namespace(netns)
        ip("link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", netns, ns=node.netns)
        ip("link", "set", "eth0", "up", ns=netns)
        ip("link", "set", host_if, "up", ns=node.netns)
        for addr in pod.ips:
            if self.mode == "routed":
                ip("addr", "add", f"{addr}/{addr.max_prefixlen}", "dev", "eth0", *(["nodad"] if addr.version == 6 else []), ns=netns)
                ip("route", "add", f"{addr}/{addr.max_prefixlen}", "dev", host_if, ns=node.netns)
            else:
                plen = node.pod_cidr.prefixlen if addr.version == 4 else 64
                ip("addr", "add", f"{addr}/{plen}", "dev", "eth0", *(["nodad"] if addr.version == 6 else []), ns=netns)
        has4, has6 = (any(a.version == v for a in pod.ips) for v in (4, 6))
        if self.mode == "routed":
            sysctl(node.netns, f"net.ipv4.conf.{host_if}.proxy_arp", "1")
            sysctl(node.netns, f"net.ipv4.neigh.{host_if}.proxy_delay", "0")  # default waits ~0.8 s
            ip("-6", "addr", "add", "fe80::1/64", "dev", host_if, "nodad", ns=node.netns)
            if has4:
                ip("route", "add", "169.254.1.1", "dev", "eth0", ns=netns)
                ip("route", "add", "default", "via", "169.254.1.1", "dev", "eth0", ns=netns)
            ip("-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0", ns=netns)
        else:
            ip("link", "set", host_if, "master", "cni0", ns=node.netns)
            gw = node.pod_cidr.network_address + 1
            if has4:
                ip("route", "add", "default", "via", str(gw), ns=netns)
            if has6:
                ip("-6", "route", "add", "default", "via", str(v6_for(gw)), ns=netns)
        control = str(self.state_dir / f"pod-{h}.sock")
        handle = PodHandle(pod, netns, host_if, control)
        args = [sys.executable, "-m", "policyd.lab.podproc", "--name", pod.key, "--control", control]
        args += [a for p in tcp for a in ("--tcp", str(p))] + [a for p in udp for a in ("--udp", str(p))]
        handle.proc = subprocess.Popen(["ip", "netns", "exec", netns, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        node.pods[pod.key] = handle
        return handle

    def remove_pod(self, netns: str, control: str, node: NodeHandle | None = None, key: str | None = None) -> None:
        """Kill the pod's process and delete its namespace (its veth pair goes with it)."""
        delete_namespaces(netns, exact=True)
        for f in (control, control + ".ready"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f)
        if node is not None and key is not None:
            node.pods.pop(key, None)

    def wait_ready(self, timeout: float = 10.0, handles: list[PodHandle] | None = None) -> None:
        deadline = time.monotonic() + timeout
        for h in handles if handles is not None else [h for n in self.nodes.values() for h in n.pods.values()]:
            while not os.path.exists(h.control + ".ready"):
                if time.monotonic() > deadline or (h.proc and h.proc.poll() is not None):
                    raise RuntimeError(f"pod process for {h.pod.key} did not start")
                time.sleep(0.01)

    def pod(self, key: str) -> PodHandle:
        for node in self.nodes.values():
            if key in node.pods:
                return node.pods[key]
        raise KeyError(key)

    def probe(self, src: str, dst_ip: str, protocol: str = "TCP", port: int = 80, timeout: float = 0.5) -> bool:
        """A real connection from pod `src`'s namespace (TCP connect + reply, UDP
        request/reply, or one ping)."""
        return probe_via(self.pod(src).control, dst_ip, protocol, port, timeout)

    def add_external(self, addresses: list[str], tcp: list[int], udp: list[int]) -> tuple[str, subprocess.Popen[bytes]]:
        """Hosts outside the cluster, for answers that point there: one namespace
        `<prefix>.external` on the fabric holding every address in `addresses`, routed from
        the fabric (the nodes' default route), serving `tcp` and `udp` ports as pods do."""
        netns = f"{self.prefix}.external"
        add_namespace(netns)
        ip("link", "add", "ext", "type", "veth", "peer", "name", "eth0", "netns", netns, ns=self.fabric)
        ip("link", "set", "ext", "master", "fab", "up", ns=self.fabric)
        gw4, gw6 = str(FABRIC_NET.broadcast_address - 2), "fd00:ffff::fd"
        ip("addr", "add", f"{gw4}/{FABRIC_NET.prefixlen}", "dev", "eth0", ns=netns)
        ip("-6", "addr", "add", f"{gw6}/64", "dev", "eth0", "nodad", ns=netns)
        ip("link", "set", "eth0", "up", ns=netns)
        ip("route", "add", "default", "via", str(FABRIC_NET.broadcast_address - 1), ns=netns)
        ip("-6", "route", "add", "default", "via", "fd00:ffff::fe", ns=netns)
        for a in addresses:
            v6 = ":" in a
            ip(*(["-6"] if v6 else []), "addr", "add", f"{a}/{128 if v6 else 32}", "dev", "eth0", *(["nodad"] if v6 else []), ns=netns)
            ip(*(["-6"] if v6 else []), "route", "add", a, "via", gw6 if v6 else gw4, ns=self.fabric)
        control = str(self.state_dir / "external.sock")
        args = [sys.executable, "-m", "policyd.lab.podproc", "--name", "external", "--control", control]
        args += [a for p in tcp for a in ("--tcp", str(p))] + [a for p in udp for a in ("--udp", str(p))]
        proc = subprocess.Popen(["ip", "netns", "exec", netns, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        deadline = time.monotonic() + 10
        while not os.path.exists(control + ".ready"):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the external hosts' process did not start")
            time.sleep(0.01)
        return netns, proc

    def teardown(self) -> None:
        for node in self.nodes.values():
            for h in node.pods.values():
                if h.proc and h.proc.poll() is None:
                    h.proc.kill()
                    h.proc.wait()
        delete_namespaces(self.prefix + ".")
        for f in self.state_dir.glob("pod-*"):
            f.unlink(missing_ok=True)
        try:
            self.state_dir.rmdir()
        except OSError:
            pass


def probe_via(control: str, dst_ip: str, protocol: str = "TCP", port: int | None = 80, timeout: float = 0.5) -> bool:
    """Ask the pod process behind `control` to probe `dst_ip` (any process may ask: the
    socket lives in the filesystem)."""
    return bool(ask(control, {"protocol": protocol, "host": dst_ip, "port": port, "timeout": timeout})["ok"])


def ask(control: str, request: dict[str, Any]) -> dict[str, Any]:
    """One request to the pod process behind `control`, and its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(float(request.get("timeout", 1.0)) * 3 + 3)
        s.connect(control)
        s.sendall((json.dumps(request) + "\n").encode())
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    got: dict[str, Any] = json.loads(data)
    return got
