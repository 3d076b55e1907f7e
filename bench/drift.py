"""Drift repair: how long a running lab agent takes to notice and repair each kind of
tampering with its kernel objects (harness/tampering.py), per backend, repeated."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # harness.tampering

import report  # noqa: E402

from harness.tampering import repair_times  # noqa: E402
from policyd.backends import BACKENDS  # noqa: E402
from policyd.lab.lab import Lab  # noqa: E402

RESYNC = 600.0  # no periodic resync during the run: every repair is the one-second check's
REPEATS = 3


def measure(args: Any) -> list[str]:
    os.environ["POLICYD_LAB_RESYNC"] = str(RESYNC)  # the lab's agents inherit it
    rows = []
    for backend in BACKENDS:
        lab = Lab(f"drift{uuid.uuid4().hex[:4]}")
        lab.up([str(ROOT / "examples" / "cluster" / "demo.yaml"), str(ROOT / "examples" / "policies" / "allow-frontend-to-backend.yaml")],
               topology="routed", say=lambda s: None, backend=backend)
        try:
            runs = [repair_times(lab, backend) for _ in range(REPEATS)]
        finally:
            lab.down(quiet=True)
        for i, (what, kind, _) in enumerate(runs[0]):
            rows.append([backend, what, f"`{kind}`", report.spread([r[i][2] for r in runs], "{:.2f}", " s")])
    return [
        f"A lab node (routed, the demo cluster with allow-frontend-to-backend) with its agent running; each tampering done with "
        f"nft/iptables/ipset in the node's namespace, timed until the agent's status counts a repair of that kind; "
        f"{REPEATS} rounds, median (min–max). Every second the agent reads the nftables ruleset generation; when it moved behind the agent's back, "
        f"the check compares every rule, the dispatch entries and (within 5 % of the time) every peer-set element; iptables has no generation: "
        f"every second saved lines and ipset entry counts, every element within 1 % of the time. No periodic full resync runs during the "
        f"measurement (`--resync {RESYNC:.0f}`): every repair is the check's.",
        "",
        *report.table(["backend", "tampering", "reported as", "noticed and repaired"], rows),
    ]
