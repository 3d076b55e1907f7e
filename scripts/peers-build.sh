#!/usr/bin/env bash
# Build the agents policyd is measured beside (bench/run.py --only peers) from their own Go
# modules, at the releases pinned in realcluster/peers/go.mod, into .tools/peers/ (ignored by
# git; nothing of theirs is committed). Each is built as its own module (its go.mod, go.sum and
# any replace directives apply), the way its Dockerfile builds it, with CGO off.
#   kube-network-policies: ./cmd, after our one change (realcluster/peers/
#     kube-network-policies-nfqueue.patch: the queue rule written as the xtables NFQUEUE target,
#     because this kernel has no nftables queue expression)
#   kube-router:           ./cmd/kube-router, unchanged (its version stamped in as its Makefile does)
# Cached: a binary whose module version and patch are unchanged is not rebuilt.
# A cold build takes a few minutes on 2 cores, module downloads included.
set -euo pipefail
cd "$(dirname "$0")/.."
MOD=realcluster/peers
OUT=$PWD/.tools/peers
command -v go >/dev/null || { echo "peers-build: Go is not installed (scripts/setup.sh --cluster)" >&2; exit 1; }
command -v patch >/dev/null || { echo "peers-build: patch is not installed (apt-get install patch)" >&2; exit 1; }
mkdir -p "$OUT"

build() {  # NAME MODULE PACKAGE PATCH|"" [VERSION_VARIABLE: set to the version with -X, as its Makefile does]
  local name=$1 module=$2 package=$3 change=${4:-} version_var=${5:-} version stamp dir work ldflags=""
  version=$(awk -v m="$module" '$1 == m {print $2}' "$MOD/go.mod")
  [ -n "$version" ] || { echo "peers-build: $module is not required in $MOD/go.mod" >&2; exit 1; }
  stamp="$module@$version${change:+ $(sha256sum "$change" | cut -c1-16)}${version_var:+ -X $version_var}"
  [ -z "$version_var" ] || ldflags="-X $version_var=$version"
  if [ -x "$OUT/$name" ] && [ "$(cat "$OUT/$name.stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "==> $name $version present in $OUT"
    return
  fi
  dir=$(cd "$MOD" && go mod download "$module" && go list -m -f '{{.Dir}}' "$module")
  work=$(mktemp -d /tmp/pdpeer-XXXXXX)
  cp -r "$dir/." "$work"
  chmod -R u+w "$work"  # the module cache is read-only
  if [ -n "$change" ]; then
    patch -d "$work" -p1 --forward --quiet < "$change" || { rm -rf "$work"; echo "peers-build: $change does not apply to $module@$version" >&2; exit 1; }
  fi
  echo "==> building $name $version${change:+ with $(basename "$change")}"
  if ! (cd "$work" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$OUT/$name.partial" "$package"); then
    rm -rf "$work"
    exit 1
  fi
  rm -rf "$work"
  mv "$OUT/$name.partial" "$OUT/$name"
  echo "$stamp" > "$OUT/$name.stamp"
  echo "==> $name $version in $OUT/$name"
}

build kube-network-policies sigs.k8s.io/kube-network-policies ./cmd "$MOD/kube-network-policies-nfqueue.patch"
build kube-router github.com/cloudnativelabs/kube-router/v2 ./cmd/kube-router "" github.com/cloudnativelabs/kube-router/v2/pkg/version.Version
