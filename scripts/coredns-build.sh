#!/usr/bin/env bash
# Build CoreDNS from its official Go module, at the release pinned in realcluster/coredns/go.mod,
# into .tools/coredns/<version>/coredns (ignored by git; nothing of CoreDNS is committed):
# the real DNS server of `policyd lab up --dns-zone` and of the real cluster's kube-dns Service.
# Cached by version: a machine that has the binary builds nothing (~2 min cold on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
MOD=realcluster/coredns
VERSION=$(awk '$1 == "require" && $2 == "github.com/coredns/coredns" {print $3}' "$MOD/go.mod")
[ -n "$VERSION" ] || { echo "coredns-build: no 'require github.com/coredns/coredns' line in $MOD/go.mod" >&2; exit 1; }
OUT=$PWD/.tools/coredns/$VERSION
if [ -x "$OUT/coredns" ]; then
  echo "==> CoreDNS $VERSION present in $OUT"
  exit 0
fi
command -v go >/dev/null || { echo "coredns-build: Go is not installed (it is on every machine of this kind)" >&2; exit 1; }
echo "==> building CoreDNS $VERSION from its Go module (about 2 minutes the first time)"
mkdir -p "$OUT"
(cd "$MOD" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$OUT/coredns.partial.$$" github.com/coredns/coredns)
mv "$OUT/coredns.partial.$$" "$OUT/coredns"  # (atomic: two builds at once both end well)
echo "==> CoreDNS $VERSION in $OUT/coredns"
