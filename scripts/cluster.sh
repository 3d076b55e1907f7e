#!/usr/bin/env bash
# A real Kubernetes cluster on this machine (root): a control plane and worker nodes in
# network namespaces, Kubernetes built from its Go module, containerd, runc and the CNI
# plugins from Debian, images built locally. Sets up what is missing first.
#   scripts/cluster.sh demo [--cni bridge|ptp] [--backend nftables|iptables] [--keep]
#   scripts/cluster.sh up [--cni bridge|ptp] [--proxy-mode iptables|nftables] [--name N]
#   scripts/cluster.sh walkthrough [--backend nftables|iptables]
#   scripts/cluster.sh status | logs | kubectl ARGS | helm ARGS | down
# See README, "A real cluster on this machine".
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  up|walkthrough|demo)
    scripts/setup.sh --cluster >&2
    scripts/kube-tools.sh >&2
    scripts/k8s-build.sh >&2
    scripts/coredns-build.sh >&2
    .venv/bin/python -m realcluster images >&2 ;;
esac
exec .venv/bin/python -m realcluster "$@"
