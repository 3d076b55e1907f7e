"""The agents policyd is measured beside on the same real cluster (bench/run.py --only peers).

Each peer is built from its own Go module by scripts/peers-build.sh (releases pinned in
realcluster/peers/go.mod), packed into an image here, imported into every node's containerd,
and installed from realcluster/manifests/peers/<name>.yaml: our own manifests, written after
the peer's install manifest, each saying where it differs and why. Between agents every node is
checked for what an agent left in the kernel; kube-router leaves its chains and ipsets on exit
(and its --cleanup-config crashes in v2.1.0), so `remove_leftovers` deletes them rule by rule,
never replacing a table that kube-proxy also writes.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from policyd.lab.netns import sh

from .cluster import Cluster, ClusterError
from .images import Image, ImageConfig, _cached, _debian_base, _digest, _drop_stale, _run_in_chroot, pack, run
from .paths import ROOT, TOOLS

Say = Callable[[str], None]

GO_MOD = ROOT / "realcluster" / "peers" / "go.mod"
MANIFESTS = ROOT / "realcluster" / "manifests" / "peers"
BINARIES = TOOLS / "peers"
NAMESPACE = "kube-system"

# What kube-router's network-policy controller names (pkg/controllers/netpol): its chains,
# the ipsets it makes, and the jumps it puts in the built-in chains.
KUBE_ROUTER_CHAIN = re.compile(r"^(KUBE-ROUTER-(INPUT|FORWARD|OUTPUT)|KUBE-POD-FW-\S+|KUBE-NWPLCY-\S+)$")
KUBE_ROUTER_SET = re.compile(r"^(KUBE-SRC-|KUBE-DST-|kube-router-)")
KNP_TABLE = "kube-network-policies"


@dataclass(frozen=True)
class Peer:
    name: str  # the binary, the manifest and the DaemonSet are named so
    module: str
    selector: str  # the DaemonSet's pod label
    packages: tuple[str, ...] = ()  # Debian packages its image needs (none: a static binary alone)
    binary_path: str = ""  # where the binary goes in the image
    as_cmd: bool = False  # the binary is the image's CMD, not its ENTRYPOINT (as upstream's image has it)

    @property
    def version(self) -> str:
        m = re.search(rf"^\s*{re.escape(self.module)} (v\S+)$", GO_MOD.read_text(), re.M)
        if not m:
            raise RuntimeError(f"{GO_MOD}: {self.module} is not required")
        return m.group(1)

    @property
    def image(self) -> str:
        return f"localhost/peers/{self.name}:{self.version}"

    def manifest(self) -> str:
        text = (MANIFESTS / f"{self.name}.yaml").read_text()
        if "image: IMAGE\n" not in text:
            raise RuntimeError(f"{MANIFESTS / self.name}.yaml: no 'image: IMAGE' line to fill in")
        return text.replace("image: IMAGE\n", f"image: {self.image}\n")


KUBE_NETWORK_POLICIES = Peer("kube-network-policies", "sigs.k8s.io/kube-network-policies", "app=kube-network-policies",
                             binary_path="/bin/netpol", as_cmd=True)
KUBE_ROUTER = Peer("kube-router", "github.com/cloudnativelabs/kube-router/v2", "k8s-app=kube-router",
                   packages=("iptables", "ipset", "iproute2", "conntrack"), binary_path="/usr/local/bin/kube-router")
PEERS = (KUBE_NETWORK_POLICIES, KUBE_ROUTER)


def binary(peer: Peer) -> Path:
    path, stamp = BINARIES / peer.name, BINARIES / f"{peer.name}.stamp"
    if not path.is_file() or f"@{peer.version}" not in (stamp.read_text() if stamp.exists() else ""):
        raise RuntimeError(f"{path} ({peer.module} {peer.version}) is missing: run scripts/peers-build.sh")
    return path


def build_image(peer: Peer, say: Say) -> Image:
    """A static binary alone (kube-network-policies talks netlink itself), or on Debian's
    minbase with the packages whose commands the peer runs (kube-router: iptables, ipset)."""
    exe = binary(peer)
    stem = f"peer-{peer.name}"
    out = _cached(stem, _digest(exe.read_bytes(), peer.image.encode(), " ".join(peer.packages).encode(),
                                f"{peer.binary_path} {peer.as_cmd}".encode()))
    if out.exists():
        return Image(peer.image, out)
    say(f"building image {peer.image}" + (f" (Debian minbase + {', '.join(peer.packages)})" if peer.packages else ""))
    with tempfile.TemporaryDirectory(prefix="pdpeer-", dir=out.parent) as tmp:
        rootfs = Path(tmp) / "rootfs"
        rootfs.mkdir()
        if peer.packages:
            run("tar", "-C", rootfs, "--numeric-owner", "-xf", _debian_base("bookworm", say))
            config = ImageConfig(env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"})
            _run_in_chroot(rootfs, "apt-get update -qq && apt-get install -y -qq --no-install-recommends "
                           + " ".join(peer.packages) + " >/dev/null && apt-get clean && rm -rf /var/lib/apt/lists/*",
                           config)
        else:
            for d in ("tmp", "etc", "proc", "sys", "dev"):
                (rootfs / d).mkdir()
            config = ImageConfig()
        target = rootfs / peer.binary_path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(exe, target)
        if peer.as_cmd:
            config.cmd = [peer.binary_path]
        else:
            config.entrypoint = [peer.binary_path]
        pack(rootfs, peer.image, config, out)
    _drop_stale(stem, out)
    return Image(peer.image, out)


def install(cluster: Cluster, peer: Peer, say: Say, timeout: int = 180) -> None:
    """Its image into every node's containerd, its manifest applied, its pods Ready."""
    image = build_image(peer, say)
    for node in cluster.layout.nodes:
        proc = cluster.ctr(node, "images", "import", "--no-unpack=false", str(image.archive))
        if proc.returncode != 0:
            raise ClusterError(f"importing {image.name} into {node.name}: {proc.stderr.strip()}")
    say(f"{peer.name} {peer.version}: kubectl apply -f realcluster/manifests/peers/{peer.name}.yaml")
    cluster.kubectl("apply", "-f", "-", input=peer.manifest())
    nodes = {n.name for n in cluster.layout.nodes}
    deadline = time.monotonic() + timeout
    while True:  # not `rollout status`: the peers tolerate every taint, so a node object without a
        # kubelet (the bench's) gets a pod that never starts
        pods = json.loads(cluster.kubectl("get", "pods", "-n", NAMESPACE, "-l", peer.selector, "-o", "json").stdout)["items"]
        ready = {p["spec"].get("nodeName") for p in pods
                 if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))}
        if nodes <= ready:
            return
        if time.monotonic() > deadline:
            logs = cluster.kubectl("logs", "-n", NAMESPACE, "-l", peer.selector, "--tail=20", check=False).stdout
            raise ClusterError(f"{peer.name} is not Ready on {', '.join(sorted(nodes - ready))} after {timeout} s:\n{logs}")
        time.sleep(1)


def uninstall(cluster: Cluster, peer: Peer, say: Say) -> list[str]:
    """Its objects deleted and its pods gone; then what it left in each node's kernel, said
    and removed. Returns the leftovers found (empty: it cleaned up after itself)."""
    cluster.kubectl("delete", "-f", "-", "--ignore-not-found", "--wait=true", "--timeout=90s", input=peer.manifest(), timeout=100)
    cluster.kubectl("wait", "--for=delete", "pod", "-n", NAMESPACE, "-l", peer.selector, "--timeout=90s",
                    check=False, timeout=100)
    if cluster.kubectl("get", "pods", "-n", NAMESPACE, "-l", peer.selector, "-o", "name").stdout.split():
        raise ClusterError(f"{peer.name}: its pods are still there 90 s after the DaemonSet was deleted")
    found: list[str] = []
    for node in cluster.layout.nodes:
        left = leftovers(node.netns)
        if left:
            say(f"{peer.name} left on {node.name}: {', '.join(left[:8])}{' …' if len(left) > 8 else ''}; removing")
            found += [f"{node.name}: {x}" for x in left]
            remove_leftovers(node.netns)
            still = leftovers(node.netns)
            if still:
                raise ClusterError(f"{node.name}: could not remove {', '.join(still)}")
    return found


def _in(netns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return sh(*argv, ns=netns, check=False)


def _filter_chains(netns: str) -> list[str]:
    save = _in(netns, "iptables-nft-save", "-t", "filter").stdout
    return [line[1:].split()[0] for line in save.splitlines() if line.startswith(":")]


def leftovers(netns: str) -> list[str]:
    """Any peer's objects in a node's kernel: kube-network-policies' nftables table,
    kube-router's iptables chains and ipsets."""
    out = []
    if _in(netns, "nft", "list", "table", "inet", KNP_TABLE).returncode == 0:
        out.append(f"nftables table inet {KNP_TABLE}")
    out += [f"iptables chain {c}" for c in _filter_chains(netns) if KUBE_ROUTER_CHAIN.match(c)]
    out += [f"ipset {s}" for s in _in(netns, "ipset", "list", "-n").stdout.split() if KUBE_ROUTER_SET.match(s)]
    return out


def remove_leftovers(netns: str) -> None:
    """Rule by rule: the jumps into kube-router's chains from the built-in ones, then its
    chains (flushed, deleted), then its ipsets; kube-proxy's rules in the same table stay."""
    if _in(netns, "nft", "list", "table", "inet", KNP_TABLE).returncode == 0:
        _in(netns, "nft", "delete", "table", "inet", KNP_TABLE)
    ours = [c for c in _filter_chains(netns) if KUBE_ROUTER_CHAIN.match(c)]
    save = _in(netns, "iptables-nft-save", "-t", "filter").stdout
    for line in save.splitlines():
        words = line.split()
        if line.startswith("-A ") and words[1] not in ours and "-j" in words and words[words.index("-j") + 1] in ours:
            _in(netns, "iptables-nft", "-t", "filter", "-D", words[1], *_rule_args(line))
    for chain in ours:
        _in(netns, "iptables-nft", "-t", "filter", "-F", chain)
    for chain in ours:
        _in(netns, "iptables-nft", "-t", "filter", "-X", chain)
    for s in _in(netns, "ipset", "list", "-n").stdout.split():
        if KUBE_ROUTER_SET.match(s):
            _in(netns, "ipset", "destroy", s)


def _rule_args(line: str) -> list[str]:
    """`-A CHAIN <spec>` from iptables-save → the spec as arguments (quoted comments kept whole)."""
    return shlex.split(line)[2:]
