#!/usr/bin/env bash
# Build Kubernetes from its official Go module, at the release pinned in realcluster/k8s/go.mod,
# into .tools/k8s/<version>/ (ignored by git; nothing of Kubernetes is committed).
# Cached by version: a machine that has every binary of that version builds nothing.
#   scripts/k8s-build.sh          the control plane, kubelet, kube-proxy, kubectl
# A cold build takes ~15 min on 2 cores (kube-apiserver is the longest); Go's module and
# build caches make a second version cheaper.
set -euo pipefail
cd "$(dirname "$0")/.."
MOD=realcluster/k8s
VERSION=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$MOD/go.mod")
[ -n "$VERSION" ] || { echo "k8s-build: no 'require k8s.io/kubernetes' line in $MOD/go.mod" >&2; exit 1; }
OUT=$PWD/.tools/k8s/$VERSION
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
missing=()
for b in "${BINARIES[@]}"; do [ -x "$OUT/$b" ] || missing+=("$b"); done
if [ ${#missing[@]} -eq 0 ]; then
  echo "==> Kubernetes $VERSION binaries present in $OUT"
  exit 0
fi
command -v go >/dev/null || { echo "k8s-build: Go is not installed (see README, 'A real cluster')" >&2; exit 1; }
minor=${VERSION#v1.}; minor=${minor%%.*}
ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $p.gitVersion=$VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done
pkgs=()
for b in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
echo "==> building Kubernetes $VERSION from its Go module: ${missing[*]} (cold: ~15 min on 2 cores)"
mkdir -p "$OUT"
start=$SECONDS
(cd "$MOD" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$OUT/" "${pkgs[@]}")
echo "==> built ${missing[*]} in $((SECONDS - start)) s: $("$OUT/kubectl" version --client 2>/dev/null | head -1)"
