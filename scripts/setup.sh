#!/usr/bin/env bash
# Idempotent set-up on Debian 12 (as root): system packages, a virtualenv in .venv, the
# package in it. Used by the README's two commands, by CI and by the Dockerfile.
#   scripts/setup.sh           runtime (agent, lab, CLI)
#   scripts/setup.sh --test    plus test tools
#   scripts/setup.sh --bench   plus test tools and the benchmark's plotting (matplotlib)
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

APT_PACKAGES=(nftables libnftables1 iproute2 iputils-ping iptables ipset conntrack iperf3 python3 python3-venv)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "Debian packages present: ${APT_PACKAGES[*]}"
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  say "creating virtualenv .venv with $($PY --version)"
  $PY -m venv .venv
fi
extras="agent"
[ "${1:-}" = "--test" ] && extras="agent,test"
[ "${1:-}" = "--bench" ] && extras="agent,test,bench"
say "installing policyd[$extras] into .venv"
.venv/bin/pip install -q --disable-pip-version-check -e ".[$extras]"
say "ready: $(.venv/bin/policyd --version 2>/dev/null || echo policyd) in .venv"
