#!/usr/bin/env bash
# The README's test command: set everything up, then run the whole test suite.
# Kernel and end-to-end tests need root; they create network namespaces with a unique
# prefix and remove them even when a test fails. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test --cluster
scripts/kube-tools.sh
scripts/k8s-build.sh
scripts/coredns-build.sh
echo "==> images for the real cluster"
.venv/bin/python -m realcluster images
echo "==> types (mypy, strict on every package)"
.venv/bin/mypy
echo "==> lint (ruff)"
.venv/bin/ruff check .
echo "==> import layers (import-linter)"
.venv/bin/lint-imports
echo "==> pytest $*"
exec .venv/bin/python -m pytest "$@"
