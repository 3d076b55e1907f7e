#!/usr/bin/env bash
# Build Kubernetes from its official Go module, at the release pinned in realcluster/k8s/go.mod,
# into .tools/k8s/<version>/ (ignored by git; nothing of Kubernetes is committed).
# Cached by version: a machine that has every binary of that version builds nothing.
#   scripts/k8s-build.sh   the control plane, kubelet, kube-proxy, kubectl, the e2e test
#                          binary (e2e.test, `go test -c k8s.io/kubernetes/test/e2e`) and agnhost
#                          (the e2e suite's test image, packed by `scripts/cluster.sh images`,
#                          its tag in agnhost.version) and ginkgo (runs e2e.test in parallel);
#                          and, of the network-policy-api release pinned in
#                          realcluster/npapi/go.mod, its conformance tests (our driver in
#                          realcluster/npapi/conformance, `go test -c`) into cnp-conformance.test
#                          (its CRD is committed in the chart: scripts/chart-crd.sh)
# A cold build takes ~8 min on 2 cores, module downloads included; Go's module and build
# caches make a second version cheaper.
set -euo pipefail
cd "$(dirname "$0")/.."
MOD=realcluster/k8s
VERSION=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$MOD/go.mod")
[ -n "$VERSION" ] || { echo "k8s-build: no 'require k8s.io/kubernetes' line in $MOD/go.mod" >&2; exit 1; }
OUT=$PWD/.tools/k8s/$VERSION
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl agnhost ginkgo e2e.test)
NPAPI=$(awk '$1 == "sigs.k8s.io/network-policy-api" {print $2}' realcluster/npapi/go.mod)
missing=()
for b in "${BINARIES[@]}"; do [ -x "$OUT/$b" ] || missing+=("$b"); done
[ -s "$OUT/agnhost.version" ] || [[ " ${missing[*]} " == *" agnhost "* ]] || missing+=(agnhost)
# The ClusterNetworkPolicy conformance tests, built against the adapted base manifests
# (realcluster/npapi_build.py); rebuilt when the agnhost they name or the module changes.
build_cnp_conformance() {
  local driver=realcluster/npapi/conformance dir stamp
  stamp="$(cat realcluster/npapi/go.sum realcluster/npapi/conformance/*.go realcluster/npapi_build.py | sha256sum | cut -c1-16) $(cat "$OUT/agnhost.version")"
  if [ -x "$OUT/cnp-conformance.test" ] && [ "$(cat "$OUT/cnp-conformance.stamp" 2>/dev/null)" = "$stamp" ]; then
    return
  fi
  command -v go >/dev/null || { echo "k8s-build: Go is not installed (see README, 'A real cluster')" >&2; exit 1; }
  dir=$(cd realcluster/npapi && go mod download -json sigs.k8s.io/network-policy-api >/dev/null && go list -m -f '{{.Dir}}' sigs.k8s.io/network-policy-api)
  python3 realcluster/npapi_build.py "$dir/conformance" "$driver" "registry.k8s.io/e2e-test-images/agnhost:$(cat "$OUT/agnhost.version")"
  (cd realcluster/npapi && CGO_ENABLED=0 go test -c -trimpath -o "$OUT/cnp-conformance.test.partial" ./conformance)
  cp "$driver/tests.json" "$OUT/cnp-conformance.tests.json"
  mv "$OUT/cnp-conformance.test.partial" "$OUT/cnp-conformance.test"
  echo "$stamp" > "$OUT/cnp-conformance.stamp"
  echo "==> ClusterNetworkPolicy conformance tests of network-policy-api $NPAPI in $OUT/cnp-conformance.test"
}
if [ ${#missing[@]} -eq 0 ]; then
  echo "==> Kubernetes $VERSION binaries present in $OUT"
  build_cnp_conformance
  exit 0
fi
command -v go >/dev/null || { echo "k8s-build: Go is not installed (see README, 'A real cluster')" >&2; exit 1; }
minor=${VERSION#v1.}; minor=${minor%%.*}
ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $p.gitVersion=$VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done
pkgs=()
for b in "${missing[@]}"; do
  case $b in
    e2e.test) ;;
    agnhost) pkgs+=("k8s.io/kubernetes/test/images/agnhost") ;;
    ginkgo) pkgs+=("github.com/onsi/ginkgo/v2/ginkgo") ;;  # the runner of e2e.test's parallel processes, same version
    *) pkgs+=("k8s.io/kubernetes/cmd/$b") ;;
  esac
done
echo "==> building Kubernetes $VERSION from its Go module: ${missing[*]} (cold: ~8 min on 2 cores)"
mkdir -p "$OUT"
start=$SECONDS
export CGO_ENABLED=0
if [ ${#pkgs[@]} -gt 0 ]; then
  (cd "$MOD" && go build -trimpath -ldflags "$ldflags" -o "$OUT/" "${pkgs[@]}")
fi
if [ ! -s "$OUT/agnhost.version" ]; then
  dir=$(cd "$MOD" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)
  cp "$dir/test/images/agnhost/VERSION" "$OUT/agnhost.version"
fi
if [ ! -x "$OUT/e2e.test" ]; then
  (cd "$MOD" && go test -c -trimpath -ldflags "$ldflags" -o "$OUT/e2e.test.partial" k8s.io/kubernetes/test/e2e) \
    && mv "$OUT/e2e.test.partial" "$OUT/e2e.test"
fi
echo "==> built ${missing[*]} in $((SECONDS - start)) s: $("$OUT/kubectl" version --client 2>/dev/null | head -1)"
build_cnp_conformance
