"""The real helm binary for every chart test module (each works run alone)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.helpers import ROOT

HELM = ROOT / ".tools" / "bin" / "helm"


@pytest.fixture(scope="session", autouse=True)
def helm_binary() -> None:
    """`scripts/setup.sh --test` puts helm in .tools/bin; a clone this user may write to gets
    it here when missing."""
    if HELM.exists():
        return
    tools = ROOT / ".tools"
    if not os.access(tools if tools.exists() else ROOT, os.W_OK):
        pytest.fail(f"no helm at {HELM}, and this user cannot fetch it there: run scripts/setup.sh --test (as root) first")
    subprocess.run([str(ROOT / "scripts" / "kube-tools.sh")], check=True)
