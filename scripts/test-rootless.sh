#!/usr/bin/env bash
# The root-free lane the README's way (CI runs it before the root suite): a fresh copy of the
# tracked files that root prepares with `scripts/setup.sh --test`, then, in that root-owned
# clone, as the unprivileged user `nobody` (with a home of its own),
# `.venv/bin/python -m pytest -m "not kernel"`. Run as root (it switches user with runuser);
# the clone and the home are removed at the end. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
user=nobody
work=$(mktemp -d /tmp/policyd-rootless.XXXXXX)
home=$(mktemp -d /tmp/policyd-rootless-home.XXXXXX)
trap 'rm -rf "$work" "$home"' EXIT
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$work"
chmod 755 "$work"  # readable by everyone, writable by root only: a clone root prepared
chown "$user": "$home"
say "root prepares the clone: scripts/setup.sh --test in $work"
(cd "$work" && scripts/setup.sh --test)
say "root-free lane as $user in $work (root-owned)"
runuser -u "$user" -- env HOME="$home" sh -euc '
  cd "$1"; shift
  exec .venv/bin/python -m pytest -m "not kernel" "$@"
' sh "$work" "$@"
