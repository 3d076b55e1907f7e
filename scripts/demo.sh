#!/usr/bin/env bash
# The README's first command: set everything up, then run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "==> policyd matrix: who may talk to whom before any policy"
.venv/bin/policyd matrix -f examples/cluster
echo
echo "==> policyd matrix with examples/policies/allow-frontend-to-backend.yaml"
.venv/bin/policyd matrix -f examples/cluster -f examples/policies/allow-frontend-to-backend.yaml
echo
echo "==> policyd explain: why frontend reaches backend, and why unallowed does not"
.venv/bin/policyd explain -f examples/cluster -f examples/policies/allow-frontend-to-backend.yaml \
  --from default/frontend-36f03 --to default/backend-17fb8
set +e
.venv/bin/policyd explain -f examples/cluster -f examples/policies/allow-frontend-to-backend.yaml \
  --from default/unallowed-1d38f --to default/backend-17fb8
rc=$?
set -e
[ $rc -eq 1 ] || { echo "demo: expected a DENIED verdict (exit 1), got $rc"; exit 1; }
echo "demo: all observations as expected"
