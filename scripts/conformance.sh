#!/usr/bin/env bash
# An upstream conformance suite against policyd on a real two-node cluster of this machine;
# see docs/conformance.md. --suite netpol (default): Kubernetes' `[sig-network] Netpol` e2e
# specs, unchanged; --suite cnp: network-policy-api's ClusterNetworkPolicy conformance tests.
#   scripts/conformance.sh [--suite netpol|cnp] [--cni bridge|ptp] [--backend nftables|iptables]
#                          [--proxy-mode iptables|nftables] [--procs 4] [--focus REGEX]
#                          [--without-policyd] [--write] [--keep]
# Sets a fresh machine up first (packages, virtualenv, Kubernetes, e2e.test, images), like the
# test command. --write records the result in docs/conformance.md. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test --cluster
scripts/kube-tools.sh
scripts/k8s-build.sh
.venv/bin/python -m realcluster images
exec .venv/bin/python -m realcluster conformance --name conf "$@"
