#!/usr/bin/env bash
# Idempotent set-up on Debian 12 (as root): system packages, a virtualenv in .venv, the
# package in it. Used by the README's two commands, by CI and by the Dockerfile.
#   scripts/setup.sh           runtime (agent, lab, CLI)
#   scripts/setup.sh --test    plus test tools (and Debian's chromium, for a headless screenshot,
#                              and prometheus, whose server and promtool check the chart's alerts;
#                              the real kubectl and helm in .tools/bin, scripts/kube-tools.sh)
#   scripts/setup.sh --bench   plus test tools and the benchmark's plotting (matplotlib)
#   scripts/setup.sh --cluster plus what the real cluster needs (etcd, containerd, runc, the
#                              CNI plugins, image tools); combine with --test or --bench
#   scripts/setup.sh --image   only what `policyd run` needs on a node, installed (not
#                              editable) without the `kubernetes` client: the Dockerfile's
#                              build stage (scripts/slim-root.sh then keeps what it uses)
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

extras="agent"
tools=0
cluster=0
image=0
for arg in "$@"; do
  case "$arg" in
    --image) extras="node"; image=1 ;;
    --test) extras="agent,test"; tools=1 ;;
    --bench) extras="agent,test,bench"; tools=1 ;;
    --cluster) cluster=1 ;;
    *) echo "setup.sh: unknown option $arg (--test, --bench, --cluster, --image)" >&2; exit 2 ;;
  esac
done

APT_PACKAGES=(nftables libnftables1 iproute2 iputils-ping iptables ipset conntrack iperf3 python3 python3-venv)
if [ $image = 1 ]; then
  APT_PACKAGES=(nftables libnftables1 iptables ipset python3 python3-venv busybox)  # the lab's tools stay out
fi
if [ "$extras" != agent ]; then
  APT_PACKAGES+=(chromium prometheus)  # a headless screenshot of `policyd matrix -o html`; the alerts
fi
if [ $cluster = 1 ]; then
  # The real cluster (realcluster/): Kubernetes itself is built from its Go module by
  # scripts/k8s-build.sh; the rest comes from Debian.
  APT_PACKAGES+=(etcd-server containerd runc containernetworking-plugins umoci skopeo debootstrap
                 debian-archive-keyring busybox-static gcc libc6-dev openssl util-linux patch)
fi
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # No service is started on this machine by the install (Debian's prometheus, containerd
  # and etcd would start theirs): the tests run their own, in namespaces of their own.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "Debian packages present: ${APT_PACKAGES[*]}"
fi

# Debian's python3 (installed above): a virtualenv made from an interpreter in root's home
# (pyenv) would be unusable for the other users of a clone root prepared.
PY=${PYTHON:-/usr/bin/python3}
if [ ! -x .venv/bin/python ]; then
  say "creating virtualenv .venv with $($PY --version)"
  $PY -m venv .venv
fi
say "installing policyd[$extras] into .venv"
if [ $image = 1 ]; then
  .venv/bin/pip install -q --disable-pip-version-check --no-cache-dir ".[$extras]"
else
  .venv/bin/pip install -q --disable-pip-version-check -e ".[$extras]"
fi
if [ $tools = 1 ]; then
  # The tests' kubectl and helm (the chart tests need helm; the root-free lane cannot fetch
  # it into a clone root owns).
  scripts/kube-tools.sh
fi
say "ready: $(.venv/bin/policyd --version 2>/dev/null || echo policyd) in .venv"
