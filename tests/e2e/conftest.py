"""End-to-end: `policyd lab` clusters (pods and nodes as network namespaces, one agent
process per node reading the lab's manifest directory) probed with real packets.

Each lab gets a unique name and a state root under pytest's tmp_path; teardown runs
`lab down` and then asserts that no namespace and no process of the lab is left."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from policyd.lab.lab import Lab
from policyd.lab.netns import list_namespaces
from tests.helpers import ROOT


def leftovers(lab: Lab) -> list[str]:
    names = list_namespaces(lab.prefix + ".")
    procs = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if str(lab.dir).encode() in cmd:
            procs.append(pid)
    return names + [f"pid {p}" for p in procs]


@pytest.fixture(name="leftovers")
def leftovers_fixture():
    return leftovers


@pytest.fixture
def make_lab(tmp_path):
    made: list[Lab] = []

    def make(paths: list[str], topology: str = "routed", **kw) -> Lab:
        lab = Lab(f"e2e{uuid.uuid4().hex[:6]}", root=tmp_path / "labs")
        made.append(lab)
        lab.up([str(ROOT / p) for p in paths], topology=topology, say=lambda s: None, **kw)
        return lab

    yield make
    for lab in made:
        lab.down(quiet=True)
        assert not leftovers(lab), f"lab {lab.name} left {leftovers(lab)}"
