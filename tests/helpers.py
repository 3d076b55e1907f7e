"""Small helpers several test modules share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from policyd.dataplane.ops import STALE_DELAY

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_POLICY = ROOT / "examples" / "policies" / "allow-frontend-to-backend.yaml"  # the README's allow-frontend-to-backend


def settle(syncer: Any) -> Any:
    """One more sync, as if the chains flushed by earlier syncs had waited for their deletion
    (dataplane.ops.STALE_DELAY): afterwards the kernel holds exactly desired, no flushed
    chain left over. Returns the sync's result."""
    real = syncer.clock
    syncer.clock = lambda: real() + STALE_DELAY + 1
    try:
        return syncer.sync()
    finally:
        syncer.clock = real
