"""Bring a cluster up, find out how it is, take it down.

up: fabric and node network namespaces → certificates → etcd, kube-apiserver,
kube-controller-manager, kube-scheduler in the fabric namespace → per node a mount
namespace, containerd with the images loaded, the CNI configuration, kubelet, kube-proxy →
every node Ready. down: kill every process of the cluster (found by namespace, cgroup and
command line), drop the mount namespaces (and with them every mount made inside), remove
the cgroups, the network namespaces and the state directory. down works on what the kernel
shows, so it also cleans up after a crash or an interrupted up.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from policyd.lab.netns import add_namespace, delete_namespaces, ip, list_namespaces, sysctl

from . import config, processes
from .images import Image, build_all
from .layout import API_ADDR, API_ADDR6, API_PORT, API_SERVICE_IP, API_SERVICE_IP6, FABRIC_NET, FABRIC_NET6, NODE_BINDS, NODE_FILE_BINDS, Layout, Node
from .paths import STATE_ROOT, k8s_bin
from .pki import PKI

Say = Callable[[str], None]


_HOST_DIRS = threading.Lock()  # host mount points are shared by the clusters of one process


class ClusterError(RuntimeError):
    pass


class Cluster:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.pki_dir = layout.state / "pki"

    @property
    def audit_log(self) -> Path:
        """The API server's record of every write (JSON lines, audit.k8s.io/v1 Events)."""
        return self.layout.control_plane.state / "logs" / "audit.log"

    @classmethod
    def existing(cls, name: str) -> Cluster:
        """The cluster `name` as `up` recorded it (its CNI style, proxy mode, node count)."""
        record = STATE_ROOT / name / "cluster.json"
        if not record.exists():
            raise ClusterError(f"no cluster {name!r} (no {record}); start one with `cluster.sh up`")
        return cls(Layout(**json.loads(record.read_text())))

    # --- up ------------------------------------------------------------------------------

    def up(self, say: Say = print) -> None:
        lay = self.layout
        if list_namespaces(lay.prefix + "."):
            raise ClusterError(f"cluster {lay.name!r} exists (namespaces {lay.prefix}.*): `cluster.sh down --name {lay.name}` first")
        started = time.monotonic()
        binaries = {b: str(k8s_bin(b)) for b in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl")}
        images = build_all(say)
        lay.state.mkdir(parents=True, exist_ok=True)
        (lay.state / "cluster.json").write_text(json.dumps(asdict(lay)))
        try:
            say(f"network ({lay.ip_family}): fabric {FABRIC_NET}{f' and {FABRIC_NET6}' if 6 in lay.families else ''}, {lay.workers} nodes, "
                f"pod CIDRs {', '.join(str(c) for n in lay.nodes for c in lay.pod_cidrs(n))}")
            self._network()
            say("certificates: a CA of our own, serving and client certificates for every component")
            self._pki()
            say(f"control plane in {lay.fabric}: etcd, kube-apiserver on {lay.server}, controller-manager, scheduler")
            self._control_plane(binaries)
            for node in lay.nodes:
                say(f"{node.name} ({', '.join(map(str, lay.node_ips(node)))}, {lay.cni} CNI): containerd, images, kubelet, "
                    f"kube-proxy ({lay.proxy_mode})")
                self._node(node, binaries, images)
            self._wait_ready(say)
        except BaseException as e:
            say("up failed: taking down what was started")
            logs = self.log_tails()
            self.down(say=lambda s: None)
            if isinstance(e, ClusterError) and logs:
                raise ClusterError(f"{e}\n{logs}") from None
            raise
        say(f"cluster {lay.name!r} up in {time.monotonic() - started:.1f} s; kubeconfig {lay.kubeconfig} "
            f"(use it inside {lay.fabric}: scripts/cluster.sh kubectl ...)")

    def _network(self) -> None:
        """The fabric always carries IPv4 (the control plane's own traffic); with IPv6 in the
        cluster's families it carries IPv6 too (addresses without duplicate address
        detection: a tentative address cannot be bound)."""
        lay = self.layout
        v6 = 6 in lay.families
        add_namespace(lay.fabric)
        sysctl(lay.fabric, "net.ipv4.ip_forward", "1")
        ip("link", "add", "fab", "type", "bridge", ns=lay.fabric)
        ip("addr", "add", f"{API_ADDR}/{FABRIC_NET.prefixlen}", "dev", "fab", ns=lay.fabric)
        if v6:
            sysctl(lay.fabric, "net.ipv6.conf.all.forwarding", "1")
            ip("addr", "add", f"{API_ADDR6}/{FABRIC_NET6.prefixlen}", "dev", "fab", "nodad", ns=lay.fabric)
        ip("link", "set", "fab", "up", ns=lay.fabric)
        # The fabric reaches Services the way any other host would: through a node.
        for cidr, via in zip(lay.service_cidrs, lay.node_ips(lay.nodes[0]), strict=True):
            ip("route", "add", str(cidr), "via", str(via), ns=lay.fabric)
        for node in lay.nodes:
            add_namespace(node.netns)
            sysctl(node.netns, "net.ipv4.ip_forward", "1")
            ip("link", "add", "eth0", "type", "veth", "peer", "name", f"n{node.index}", "netns", lay.fabric, ns=node.netns)
            ip("addr", "add", f"{node.ip}/{FABRIC_NET.prefixlen}", "dev", "eth0", ns=node.netns)
            if v6:
                sysctl(node.netns, "net.ipv6.conf.all.forwarding", "1")
                ip("addr", "add", f"{node.ip6}/{FABRIC_NET6.prefixlen}", "dev", "eth0", "nodad", ns=node.netns)
            ip("link", "set", "eth0", "up", ns=node.netns)
            ip("route", "add", "default", "via", str(API_ADDR), ns=node.netns)
            if v6:
                ip("-6", "route", "add", "default", "via", str(API_ADDR6), ns=node.netns)
            ip("link", "set", f"n{node.index}", "master", "fab", "up", ns=lay.fabric)
            # Pod CIDRs are routed node to node through the fabric (what a routing daemon would do).
            for cidr, via in zip(lay.pod_cidrs(node), lay.node_ips(node), strict=True):
                ip("route", "add", str(cidr), "via", str(via), ns=lay.fabric)
            for key in ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"):
                sysctl(node.netns, key, "1")

    def _pki(self) -> None:
        lay, pki = self.layout, PKI(self.pki_dir)
        pki.issue("apiserver", "kube-apiserver", server_names=(
            "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
            "localhost", "127.0.0.1", str(API_ADDR), str(API_SERVICE_IP), str(API_ADDR6), str(API_SERVICE_IP6)), client=False)
        pki.issue("apiserver-kubelet", "kube-apiserver-kubelet-client", ("system:masters",))
        admin = pki.issue("admin", "kubernetes-admin", ("system:masters",))
        pki.kubeconfig(lay.kubeconfig, lay.server, "admin", admin)
        local = f"https://127.0.0.1:{API_PORT}"
        pki.kubeconfig(self.pki_dir / "controller-manager.kubeconfig", local, "cm",
                       pki.issue("controller-manager", "system:kube-controller-manager"))
        pki.kubeconfig(self.pki_dir / "scheduler.kubeconfig", local, "scheduler",
                       pki.issue("scheduler", "system:kube-scheduler"))
        proxy = pki.issue("kube-proxy", "system:kube-proxy")
        pki.kubeconfig(self.pki_dir / "kube-proxy.kubeconfig", lay.server, "kube-proxy", proxy)
        for node in lay.nodes:
            client = pki.issue(f"node-{node.name}", f"system:node:{node.name}", ("system:nodes",))
            pki.kubeconfig(self.pki_dir / f"kubelet-{node.name}.kubeconfig", lay.server, node.name, client)
            pki.issue(f"kubelet-{node.name}", f"system:node:{node.name}", ("system:nodes",),
                      server_names=(node.name, str(node.ip), str(node.ip6)), client=False)

    def api_only(self, audit_policy: str, etcd_size: str = "1g", say: Say = print) -> None:
        """The fabric and node namespaces, certificates, etcd and kube-apiserver, and nothing
        else (no controller-manager, scheduler, containerd or kubelets): what a benchmark of
        an agent against the real API server needs. `down` removes it like a whole cluster."""
        lay = self.layout
        if list_namespaces(lay.prefix + "."):
            raise ClusterError(f"cluster {lay.name!r} exists (namespaces {lay.prefix}.*)")
        lay.state.mkdir(parents=True, exist_ok=True)
        (lay.state / "cluster.json").write_text(json.dumps(asdict(lay)))
        try:
            self._network()
            self._pki()
            self._api_server(str(k8s_bin("kube-apiserver")), audit_policy, etcd_size)
        except BaseException:
            say("up failed: taking down what was started")
            self.down(say=lambda s: None)
            raise

    def _api_server(self, binary: str, audit_policy: str, etcd_size: str) -> None:
        cp, pki = self.layout.control_plane, self.pki_dir
        processes.make_mount_ns(cp.mount_ns)
        etcd_dir = cp.state / "etcd"
        etcd_dir.mkdir(parents=True, exist_ok=True)
        # etcd's data on a tmpfs inside the control plane's mount namespace: fast (no fsync
        # to disk) and gone with the namespace.
        processes.in_mount_ns(cp.mount_ns, "mount", "-t", "tmpfs", "-o", f"mode=0700,size={etcd_size}", "tmpfs", str(etcd_dir))
        logs = cp.state / "logs"
        self._start(cp, "etcd", ["etcd", *config.etcd_args(etcd_dir / "data")], logs)
        policy = cp.state / "audit-policy.yaml"
        policy.write_text(audit_policy)
        self._start(cp, "kube-apiserver", [binary, *config.apiserver_args(self.layout, pki, policy, self.audit_log)], logs)
        self._wait("kube-apiserver /readyz", lambda: self.kubectl("get", "--raw", "/readyz", check=False).returncode == 0, 90)

    def _control_plane(self, bins: dict[str, str]) -> None:
        cp, pki = self.layout.control_plane, self.pki_dir
        self._api_server(bins["kube-apiserver"], config.AUDIT_POLICY, "1g")
        logs = cp.state / "logs"
        self._start(cp, "kube-controller-manager",
                    [bins["kube-controller-manager"], *config.controller_manager_args(pki, pki / "controller-manager.kubeconfig")], logs)
        self._start(cp, "kube-scheduler", [bins["kube-scheduler"], *config.scheduler_args(pki / "scheduler.kubeconfig")], logs)

    def _node(self, node: Node, bins: dict[str, str], images: list[Image]) -> None:
        lay = self.layout
        processes.make_mount_ns(node.mount_ns)
        for target in NODE_BINDS:
            src = node.bind_source(target)
            src.mkdir(parents=True, exist_ok=True)
            self._ensure_host_dir(Path(target))
            processes.in_mount_ns(node.mount_ns, "mount", "--bind", str(src), target)
        for target in NODE_FILE_BINDS:
            src = node.bind_source(target)
            src.touch()
            self._ensure_host_file(Path(target))
            processes.in_mount_ns(node.mount_ns, "mount", "--bind", str(src), target)
        etc = node.bind_source("/etc/kubernetes")
        (etc / "containerd.toml").write_text(config.containerd_toml())
        name, text = config.cni_conflist(lay, node)
        (node.bind_source("/etc/cni/net.d") / name).write_text(text)
        (etc / "kubelet.yaml").write_text(config.kubelet_config(node, self.pki_dir))
        (etc / "kube-proxy.yaml").write_text(config.kube_proxy_config(lay, node, self.pki_dir / "kube-proxy.kubeconfig"))
        processes.make_cgroups(node.cgroup_root)
        logs = node.state / "logs"
        self._start(node, "containerd", ["containerd", "--config", "/etc/kubernetes/containerd.toml"], logs)
        sock = node.containerd_socket
        self._wait(f"containerd of {node.name}", lambda: self._ctr(sock, "version").returncode == 0, 30)
        for image in images:
            proc = self._ctr(sock, "images", "import", "--no-unpack=false", str(image.archive))
            if proc.returncode != 0:
                raise ClusterError(f"importing {image.name} into {node.name}: {proc.stderr.strip()}")
        self._start(node, "kubelet", [bins["kubelet"], *config.kubelet_args(
            lay, node, Path("/etc/kubernetes/kubelet.yaml"), self.pki_dir / f"kubelet-{node.name}.kubeconfig")], logs)
        self._start(node, "kube-proxy", [bins["kube-proxy"], "--config=/etc/kubernetes/kube-proxy.yaml", "--v=1"], logs)

    def _ensure_host_dir(self, path: Path) -> None:
        """A bind mount needs its mount point to exist on the host; remember the ones we made
        so `down` removes them again. (Locked: two clusters may come up side by side.)"""
        with _HOST_DIRS:
            if path.exists():
                return
            made = self.layout.state.parent / "made-dirs"
            missing = [p for p in [path, *path.parents] if not p.exists()]
            path.mkdir(parents=True)
            with open(made, "a") as f:
                for p in missing:
                    f.write(f"{p}\n")

    @staticmethod
    def _ensure_host_file(path: Path) -> None:
        """A file's mount point: the host's own lock file, made empty if missing (what iptables
        itself does on first use) and left in place by `down`: removing a lock file another
        process may hold would break its mutual exclusion."""
        with _HOST_DIRS:
            if not path.exists():
                path.touch(mode=0o600)

    def _start(self, node: Node, name: str, argv: list[str], logs: Path) -> None:
        processes.start(name, node.netns, node.mount_ns, argv, logs / f"{name}.log")

    def restart(self, node: Node, name: str, down_for: float = 0.0) -> None:
        """Stop a component of `node` (the control plane: etcd, kube-apiserver, …; a worker:
        kubelet, containerd) with SIGTERM (SIGKILL after 15 s) and start it again with the
        same command line and environment, `down_for` seconds later: what a restart of its
        systemd unit does."""
        logs = node.state / "logs"
        pid = int((logs / f"{name}.pid").read_text())
        argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")]
        env = dict(e.decode().split("=", 1) for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in e)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while Path(f"/proc/{pid}").exists() and not _zombie(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(down_for)
        processes.start(name, node.netns, node.mount_ns, argv, logs / f"{name}.log", env)

    def ctr(self, node: Node, *args: str) -> subprocess.CompletedProcess[str]:
        """`ctr` against a node's containerd (namespace k8s.io)."""
        return self._ctr(node.containerd_socket, *args)

    @staticmethod
    def _ctr(sock: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ctr", "--address", str(sock), "--namespace", "k8s.io", *args],
                              capture_output=True, text=True, timeout=300)

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise ClusterError(f"{what}: not ready within {timeout:.0f} s")
            self._check_alive()
            time.sleep(0.25)

    def _check_alive(self) -> None:
        for pidfile in self.layout.state.glob("*/logs/*.pid"):
            pid = int(pidfile.read_text())
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if not Path(f"/proc/{pid}").exists() or _zombie(pid):
                raise ClusterError(f"{pidfile.stem} ({pidfile.parent.parent.name}) exited")

    def _wait_ready(self, say: Say) -> None:
        names = [n.name for n in self.layout.nodes]

        def nodes_ready() -> bool:
            proc = self.kubectl("get", "nodes", "-o", "json", check=False)
            if proc.returncode != 0:
                return False
            ready = {i["metadata"]["name"] for i in json.loads(proc.stdout)["items"]
                     if any(c["type"] == "Ready" and c["status"] == "True" for c in i["status"].get("conditions", []))}
            return ready >= set(names)

        self._wait(f"nodes {', '.join(names)} Ready", nodes_ready, 90)
        self._wait("ServiceAccount default/default",
                   lambda: self.kubectl("get", "serviceaccount", "default", check=False).returncode == 0, 60)
        say(f"nodes Ready: {', '.join(names)}")

    # --- using it ------------------------------------------------------------------------

    def run_in_fabric(self, argv: list[str], check: bool = True, timeout: float | None = 300,
                      input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside the fabric namespace, where the API server is reachable."""
        cmd = ["nsenter", f"--net=/run/netns/{self.layout.fabric}", "--", *argv]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input,
                              env={**os.environ, "KUBECONFIG": str(self.layout.kubeconfig)})
        if check and proc.returncode != 0:
            raise ClusterError(f"{' '.join(argv[:6])}: {(proc.stderr or proc.stdout).strip()[-3000:]}")
        return proc

    def kubectl(self, *args: str, check: bool = True, timeout: float | None = 120,
                input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.run_in_fabric([str(k8s_bin("kubectl")), *args], check=check, timeout=timeout, input=input)

    def status(self) -> dict[str, object]:
        lay = self.layout
        procs: dict[str, str] = {}
        for pidfile in sorted(lay.state.glob("*/logs/*.pid")):
            pid = int(pidfile.read_text())
            alive = Path(f"/proc/{pid}").exists() and not _zombie(pid)
            procs[f"{pidfile.parent.parent.name}/{pidfile.stem}"] = f"pid {pid} {'running' if alive else 'exited'}"
        nodes = self.kubectl("get", "nodes", "-o", "wide", check=False)
        return {"name": lay.name, "cni": lay.cni, "proxyMode": lay.proxy_mode, "server": lay.server,
                "kubeconfig": str(lay.kubeconfig), "namespaces": list_namespaces(lay.prefix + "."),
                "processes": procs, "nodes": nodes.stdout.strip() or nodes.stderr.strip()}

    def log_tails(self, lines: int = 15) -> str:
        out = []
        for log in sorted(p for p in self.layout.state.glob("*/logs/*.log") if p.name != "audit.log"):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.parent.parent.name}/{log.name} (last {len(tail)} lines)\n" + "\n".join(tail))
        return "\n".join(out)

    # --- down ----------------------------------------------------------------------------

    def down(self, say: Say = print) -> None:
        down(self.layout, say)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def down(layout: Layout, say: Say = print) -> None:
    """Remove everything of cluster `layout.name`, from what the kernel shows."""
    lay = layout
    netns = {i for n in list_namespaces(lay.prefix + ".") if (i := processes.ns_inode(f"/run/netns/{n}"))}
    handles = [lay.control_plane.mount_ns, *(n.mount_ns for n in lay.nodes)]
    ns_dir = lay.state / "ns"
    if ns_dir.is_dir():  # also nodes a larger earlier `up` made
        handles += [p for p in ns_dir.iterdir() if p not in handles]
    mntns = {i for h in handles if h.exists() and (i := processes.ns_inode(h)) and processes.is_mountpoint(h)}
    roots = {n.cgroup_root for n in lay.nodes} | {"/" + f"{lay.prefix}.node{i}".replace(".", "-") for i in range(1, 9)}
    left = processes.kill_all(lambda: processes.members(netns, mntns, roots, str(lay.state)))
    if left:
        raise ClusterError(f"processes of cluster {lay.name!r} would not die: {left}")
    for root in roots:
        stuck = processes.remove_cgroups(root)
        if stuck:
            raise ClusterError(f"cgroups of cluster {lay.name!r} could not be removed: {stuck[:5]}")
    for point in processes.mounts_under(lay.state):
        subprocess.run(["umount", "-l", point], capture_output=True)
    delete_namespaces(lay.prefix + ".")
    if lay.state.exists():
        shutil.rmtree(lay.state)
    _remove_made_dirs(lay.state.parent)
    say(f"cluster {lay.name!r} down: processes, mounts, cgroups, namespaces and {lay.state} removed")


def _remove_made_dirs(state_root: Path) -> None:
    """Mount points `up` created on the host, removed once no cluster is left."""
    made = state_root / "made-dirs"
    if not made.exists() or any(p.is_dir() and (p / "cluster.json").exists() for p in state_root.iterdir()):
        return
    for line in sorted(set(made.read_text().split()), key=len, reverse=True):
        try:
            os.rmdir(line)
        except OSError:
            pass
    made.unlink()


def rollout(cluster: Cluster, what: str, namespace: str, say: Callable[[str], None], timeout: int = 120) -> None:
    """Wait for `kubectl rollout status`; on failure the error carries the pods and the last events."""
    proc = cluster.kubectl("rollout", "status", what, "-n", namespace, f"--timeout={timeout}s", check=False,
                           timeout=timeout + 10)
    if proc.returncode != 0:
        pods = cluster.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout
        events = cluster.kubectl("get", "events", "-A", "--sort-by=.lastTimestamp", check=False).stdout[-3000:]
        raise ClusterError(f"{what} not rolled out: {proc.stderr.strip() or proc.stdout.strip()}\n{pods}\n{events}")
    say(f"{what}: rolled out")
