#!/usr/bin/env bash
# The chart's ClusterNetworkPolicy CRD, charts/policyd/crds/clusternetworkpolicies.yaml, is
# committed so that `helm install` works from a fresh clone with nothing built. It is the
# experimental-channel file of the network-policy-api release pinned in
# realcluster/npapi/go.mod (it has destinationNamedPort, which policyd enforces), unchanged.
#   scripts/chart-crd.sh          write it from the pinned module (after changing the pin)
#   scripts/chart-crd.sh --check  exit 1 if the committed file differs (tests/chart runs it)
# Needs Go (the module comes from the Go module proxy, checked against go.sum).
set -euo pipefail
cd "$(dirname "$0")/.."
CRD=charts/policyd/crds/clusternetworkpolicies.yaml
NPAPI=$(awk '$1 == "sigs.k8s.io/network-policy-api" {print $2}' realcluster/npapi/go.mod)
command -v go >/dev/null || { echo "chart-crd: Go is not installed (see README, 'A real cluster')" >&2; exit 1; }
dir=$(cd realcluster/npapi && go mod download -json sigs.k8s.io/network-policy-api >/dev/null && go list -m -f '{{.Dir}}' sigs.k8s.io/network-policy-api)
src="$dir/config/crd/experimental/policy.networking.k8s.io_clusternetworkpolicies.yaml"
case "${1:-}" in
  --check)
    cmp -s "$src" "$CRD" || { echo "chart-crd: $CRD is not network-policy-api $NPAPI's CRD (scripts/chart-crd.sh rewrites it)" >&2; exit 1; }
    echo "==> $CRD is network-policy-api $NPAPI's CRD" ;;
  "")
    install -m 0644 "$src" "$CRD"
    echo "==> ClusterNetworkPolicy CRD of network-policy-api $NPAPI in $CRD" ;;
  *) echo "chart-crd: unknown option $1 (--check)" >&2; exit 2 ;;
esac
