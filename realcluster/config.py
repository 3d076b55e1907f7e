"""Configuration of every component, as text or argument lists. Pure: the caller writes
files and starts processes. Paths are the ones a process sees inside its node's mount
namespace (see layout.NODE_BINDS) unless they point into the cluster's state directory."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .images import PAUSE
from .layout import API_PORT, Layout, Node

CNI_NETWORK = "policyd-test"


def cni_conflist(layout: Layout, node: Node) -> tuple[str, str]:
    """(file name, content) of the node's CNI configuration: the real `bridge` or `ptp`
    plugin with `host-local` addresses from the node's pod CIDRs (one range per family, the
    primary first), then `portmap`."""
    style = layout.cni
    ipam = {"type": "host-local", "ranges": [[{"subnet": str(c)}] for c in layout.pod_cidrs(node)],
            "routes": [{"dst": "0.0.0.0/0" if f == 4 else "::/0"} for f in layout.families]}
    if style == "bridge":
        main = {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False, "hairpinMode": True, "ipam": ipam}
    else:
        main = {"type": "ptp", "ipMasq": False, "mtu": 1500, "ipam": ipam}
    conf = {"cniVersion": "0.4.0", "name": CNI_NETWORK,
            "plugins": [main, {"type": "portmap", "capabilities": {"portMappings": True}}]}
    return f"10-{style}.conflist", json.dumps(conf, indent=2) + "\n"


def containerd_toml() -> str:
    """containerd 1.6 (Debian) for one node. `restrict_oom_score_adj`: the shim may not raise
    its own OOM score here (no CAP_SYS_RESOURCE), and without it every sandbox fails."""
    return f"""version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE}"
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "/etc/cni/net.d"
"""


def kubelet_config(node: Node, pki_dir: Path) -> str:
    """KubeletConfiguration for a node on this machine: cgroup v1 with cgroupfs under a root
    of its own, no swap check, eviction and image GC out of the way (the disk is shared by
    every node), authenticated and authorised API (webhook), TLS with our CA."""
    return yaml.safe_dump({
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "failCgroupV1": False, "failSwapOn": False, "cgroupDriver": "cgroupfs", "cgroupRoot": node.cgroup_root,
        "cgroupsPerQOS": True, "enforceNodeAllocatable": [],
        "containerRuntimeEndpoint": "unix:///run/containerd/containerd.sock",
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(pki_dir / "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(pki_dir / f"kubelet-{node.name}.crt"),
        "tlsPrivateKeyFile": str(pki_dir / f"kubelet-{node.name}.key"),
        "readOnlyPort": 0, "port": 10250, "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
        "clusterDomain": "cluster.local", "resolvConf": "/etc/resolv.conf",
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                         "nodefs.inodesFree": "1%"},
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False, "maxPods": 110, "rotateCertificates": False,
        "nodeStatusReportFrequency": "10s", "localStorageCapacityIsolation": False,
    })


def kube_proxy_config(layout: Layout, node: Node, kubeconfig: Path) -> str:
    """conntrack sizes left alone (0): the global conntrack table is not ours to resize."""
    return yaml.safe_dump({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": node.name, "mode": layout.proxy_mode, "clusterCIDR": ",".join(map(str, layout.cluster_cidrs)),
        "bindAddress": str(layout.node_ips(node)[0]), "metricsBindAddress": "127.0.0.1:10249", "healthzBindAddress": "127.0.0.1:10256",
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    })


def etcd_args(data_dir: Path) -> list[str]:
    url = "http://127.0.0.1:2379"
    return ["--name=cp", f"--data-dir={data_dir}", f"--listen-client-urls={url}", f"--advertise-client-urls={url}",
            "--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster=cp=http://127.0.0.1:2380", "--log-level=warn"]


AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  # Every write, by anyone: what the tests check the agent never does (it may only post
  # Events). Reads are not recorded.
  - level: Metadata
    verbs: [create, update, patch, delete, deletecollection]
  - level: None
"""


def apiserver_args(layout: Layout, pki: Path, audit_policy: Path, audit_log: Path) -> list[str]:
    """Listens on every address of both families when the cluster has IPv6 (`::`)."""
    bind = "::" if 6 in layout.families else "0.0.0.0"
    return [
        f"--audit-policy-file={audit_policy}", f"--audit-log-path={audit_log}", "--audit-log-format=json",
        f"--advertise-address={layout.api_addr}", f"--bind-address={bind}", f"--secure-port={API_PORT}",
        "--etcd-servers=http://127.0.0.1:2379", f"--service-cluster-ip-range={','.join(map(str, layout.service_cidrs))}",
        f"--client-ca-file={pki}/ca.crt", f"--tls-cert-file={pki}/apiserver.crt", f"--tls-private-key-file={pki}/apiserver.key",
        f"--kubelet-client-certificate={pki}/apiserver-kubelet.crt", f"--kubelet-client-key={pki}/apiserver-kubelet.key",
        f"--kubelet-certificate-authority={pki}/ca.crt", "--kubelet-preferred-address-types=InternalIP,Hostname",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki}/sa.pub", f"--service-account-signing-key-file={pki}/sa.key",
        "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction", "--allow-privileged=true",
        "--profiling=false", "--v=1",
    ]


def controller_manager_args(pki: Path, kubeconfig: Path) -> list[str]:
    """Service-account credentials per controller: with its own identity the DaemonSet
    controller may not create ControllerRevisions and a DaemonSet never gets a pod."""
    return [
        f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
        "--use-service-account-credentials=true", f"--service-account-private-key-file={pki}/sa.key",
        f"--root-ca-file={pki}/ca.crt", f"--cluster-signing-cert-file={pki}/ca.crt", f"--cluster-signing-key-file={pki}/ca.key",
        f"--client-ca-file={pki}/ca.crt", "--leader-elect=false", "--bind-address=127.0.0.1", "--profiling=false", "--v=1",
    ]


def scheduler_args(kubeconfig: Path) -> list[str]:
    return [f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}", "--leader-elect=false", "--bind-address=127.0.0.1",
            "--profiling=false", "--v=1"]


def kubelet_args(layout: Layout, node: Node, config: Path, kubeconfig: Path) -> list[str]:
    return [f"--config={config}", f"--kubeconfig={kubeconfig}", f"--hostname-override={node.name}",
            f"--node-ip={','.join(map(str, layout.node_ips(node)))}", "--v=1"]
