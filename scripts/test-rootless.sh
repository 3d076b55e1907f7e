#!/usr/bin/env bash
# The root-free lane as an unprivileged user (CI runs it before the root suite): the tracked
# files copied to a temporary directory the user `nobody` owns, a virtualenv of Debian's
# python3 there, then `pytest -m "not kernel"`. Run as root (it switches user with runuser);
# nothing is left but the pip cache in .tools/pip-rootless. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
user=nobody
work=$(mktemp -d /tmp/policyd-rootless.XXXXXX)
trap 'rm -rf "$work"' EXIT
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$work"
cache=$PWD/.tools/pip-rootless
mkdir -p "$cache"
chown -R "$user": "$work" "$cache"
say "root-free lane as $user in $work"
runuser -u "$user" -- env HOME="$work" PIP_CACHE_DIR="$cache" sh -euc '
  cd "$1"; shift
  /usr/bin/python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -e ".[agent,test]"
  exec .venv/bin/python -m pytest -m "not kernel" -p no:cacheprovider "$@"
' sh "$work" "$@"
