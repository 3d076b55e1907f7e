#!/usr/bin/env bash
# The README's first command: set everything up, then run `policyd lab demo` (real pods as
# network namespaces, one agent per node, real packets). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/policyd lab demo "$@"
